"""Attribute vectors from minimal pairs (persona-vectors main's trait vectors): personas with
structured attributes (`sex`, `age_band`, `occupation`, ...) and a template that renders a
persona's system prompt from them. For one attribute, every persona is rendered at both
values with nothing else changed, both views are extracted by the extract driver (prefix
reuse, resume, either engine), and the deltas `view(value_to) - view(value_from)` are
averaged: oriented by value, so a female->male and a male->female swap reinforce, and
whatever co-occurs with the attribute in the persona set cancels. A binary attribute gives
one direction; one with more values gives one per value against a reference value.

Formats (README "Attribute vectors"): personas are rows `{id, name, <attribute>: value,
...}` (JSONL/JSON/parquet, like `--personas`); the template is a text file whose `{field}`s
name attributes, e.g. `You are a {age_band} {sex} who works as a {occupation}.`"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pvrs.engines.jobs import BASELINE_ID, Persona, PersonaOutcome, QAPair
from pvrs.errors import InputError, PersonaIdError
from pvrs.extraction.inputs import load_personas
from pvrs.store.layout import validate_persona_id

if TYPE_CHECKING:
    from rich.console import Console
    from torch import nn
    from transformers import PreTrainedTokenizerBase

    from pvrs.store.traits import TraitVectorStore

BUILTIN_PERSONAS = "attribute_personas.jsonl"
BUILTIN_TEMPLATE = "attribute_template.txt"
VIEWS_DIR = "attribute_views"  # the swapped views' persona vectors, beside trait_vectors/
VARIANT = "templated"  # the template renders the templated prompt; the trait store's default


@dataclass(frozen=True)
class AttributeTemplate:
    """A system prompt with `{attribute}` fields (`str.format` syntax, `{{` for a brace)."""

    text: str
    source: str
    fields: tuple[str, ...]

    @classmethod
    def parse(cls, text: str, source: str) -> AttributeTemplate:
        try:
            fields = [(f, spec or conv) for _, f, spec, conv in string.Formatter().parse(text) if f is not None]
        except ValueError as exc:
            raise InputError(f"template {source}: {exc}; write fields as {{attribute}} and braces as {{{{ }}}}") from None
        # `{a.b}`, `{0}`, `{a!r}` or `{a:>9}` would render something other than the value.
        bad = [f for f, extra in fields if extra or not f.isidentifier()]
        if bad:
            raise InputError(f"template {source}: field {{{bad[0]}}} is not a plain attribute name; write {{attribute}}")
        names = [f for f, _ in fields]
        if not names:
            raise InputError(f"template {source} has no {{attribute}} field; name the attributes it renders, e.g. {{sex}}")
        return cls(text, source, tuple(dict.fromkeys(names)))

    def render(self, persona: Persona, values: Mapping[str, Any]) -> str:
        missing = [f for f in self.fields if f not in values]
        if missing:
            raise InputError(
                f"persona {persona.id!r} has no {missing[0]!r}, which template {self.source} uses; add it to the persona"
            )
        return self.text.format(**{f: values[f] for f in self.fields})


def load_template(path: str | Path | None = None) -> AttributeTemplate:
    """A template file, or the built-in one (for the built-in attribute personas)."""
    if path is None:
        return AttributeTemplate.parse(resources.files("pvrs.data").joinpath(BUILTIN_TEMPLATE).read_text("utf-8"), "built-in")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"--template {path}: no such file") from None
    except UnicodeDecodeError:
        raise InputError(f"--template {path}: not UTF-8 text") from None
    return AttributeTemplate.parse(text, str(path))


def load_attribute_personas(path: str | Path | None = None) -> list[Persona]:
    """Personas with attributes from a file, or the built-in attribute set; the attribute-less
    baseline is left out (it has no attributes to swap)."""
    personas = load_personas(path) if path is not None else _builtin_personas()
    return [p for p in personas if not p.is_baseline]


def load_attribute_qa(path: str | Path | None = None) -> list[QAPair]:
    """QA rows from a file, or the built-in assistant's questions and answers shared by every
    persona (`persona_mean`, the default, reads only the prompt; they build the conversation)."""
    from pvrs.extraction.inputs import load_qa

    if path is not None:
        return load_qa(path)
    return [replace(r, persona_id=None) for r in load_qa() if r.persona_id == BASELINE_ID]


def _builtin_personas() -> list[Persona]:
    from pvrs.extraction.inputs import _read_builtin, personas_from_rows

    return personas_from_rows(_read_builtin(BUILTIN_PERSONAS), "built-in attribute personas")


@dataclass(frozen=True)
class Direction:
    """One trait vector: `value_to - value_from` of `attribute`, saved as `key`
    (the attribute for a binary one, `attribute=value` for one value of a wider one)."""

    key: str
    attribute: str
    value_from: str
    value_to: str


def attribute_values(personas: Sequence[Persona], template: AttributeTemplate) -> dict[str, list[str]]:
    """Each template field's values over the personas, sorted (each persona checked to have
    every field, as text or a number)."""
    values: dict[str, set[str]] = {f: set() for f in template.fields}
    for persona in personas:
        for f in template.fields:
            value = persona.attributes.get(f)
            if value is None:
                template.render(persona, persona.attributes)  # the one-line error naming it
            if isinstance(value, (dict, list)):
                raise InputError(f"persona {persona.id!r}: attribute {f!r} is a {type(value).__name__}; give one value")
            values[f].add(str(value))
    return {f: sorted(v) for f, v in values.items()}


def plan_directions(
    personas: Sequence[Persona],
    template: AttributeTemplate,
    attributes: Sequence[str] = (),
    *,
    all_binary: bool = False,
    reference: Mapping[str, str] | None = None,
) -> list[Direction]:
    """The directions to build: for each named attribute (or, with `all_binary`, every
    two-valued one), one if it is binary (sorted values: first -> second, or from the
    `reference` value), else one per value against the reference (default: the first sorted)."""
    if not personas:
        raise InputError("no personas with attributes; give rows of id, name and attribute fields")
    values = attribute_values(personas, template)
    binary = [a for a, v in values.items() if len(v) == 2]
    if all_binary and not binary:
        raise InputError(f"--all-binary: no attribute of template {template.source} has exactly two values")
    wanted = list(dict.fromkeys([*attributes, *(binary if all_binary else [])]))
    if not wanted:
        raise InputError(f"name an attribute (--attribute, one of {', '.join(values)}) or pass --all-binary")
    reference = dict(reference or {})
    for attribute in [*wanted, *reference]:
        if attribute not in values:
            known = {k for p in personas for k, v in p.attributes.items() if not isinstance(v, (dict, list))}
            where = "" if attribute in known else ", nor an attribute of the personas"
            raise InputError(
                f"unknown attribute {attribute!r}: template {template.source} has no {{{attribute}}} field{where}; "
                f"choose from {', '.join(values)}"
            )
    out: list[Direction] = []
    for attribute in wanted:
        seen = values[attribute]
        if len(seen) < 2:
            raise InputError(
                f"attribute {attribute!r} has one value ({seen[0]!r}) over the personas; a direction needs two"
            )
        ref = reference.get(attribute, seen[0])
        if ref not in seen:
            raise InputError(f"--reference {attribute}={ref}: no persona has it; choose from {', '.join(seen)}")
        for value in seen:  # each value names view files: `<persona>.<attribute>=<value>`
            try:
                validate_persona_id(f"{attribute}={value}")
            except PersonaIdError:
                raise InputError(
                    f"attribute {attribute!r} value {value!r} cannot name a file; use values without '/', '\\' "
                    "or control characters"
                ) from None
        for value in (v for v in seen if v != ref):
            key = attribute if len(seen) == 2 else f"{attribute}={value}"
            out.append(Direction(key, attribute, ref, value))
    return out


def view_id(persona: Persona, attribute: str, value: str) -> str:
    """A view's persona id: the persona's own when it already has the value (so each persona
    is extracted once however many swaps share it), else `<id>.<attribute>=<value>`."""
    return persona.id if str(persona.attributes.get(attribute)) == value else f"{persona.id}.{attribute}={value}"


def build_views(
    personas: Sequence[Persona], template: AttributeTemplate, directions: Sequence[Direction]
) -> dict[str, tuple[str, Persona]]:
    """Every persona at its own values and at both values of each direction: view id ->
    (the persona's id, the view)."""
    views: dict[str, tuple[str, Persona]] = {}
    for persona in personas:
        views[persona.id] = persona.id, replace(persona, templated=template.render(persona, persona.attributes), biography=None)
    for persona in personas:
        for d in directions:
            for value in (d.value_from, d.value_to):
                vid = view_id(persona, d.attribute, value)
                if vid in views and views[vid][0] != persona.id:
                    raise InputError(f"persona id {vid!r} is also the id of {persona.id!r} with {d.attribute}={value}; rename it")
                attrs = {**persona.attributes, d.attribute: value}
                view = Persona(vid, f"{persona.name} ({d.attribute}={value})", template.render(persona, attrs), None, attrs)
                views.setdefault(vid, (persona.id, view))
    return views


def view_qa(qa: Sequence[QAPair], views: Mapping[str, tuple[str, Persona]]) -> list[QAPair]:
    """QA rows for the views: shared rows stay shared; a persona's own rows go to each of its
    views (re-keyed to the view's id)."""
    own = [r for r in qa if r.persona_id is not None]
    rows = [r for r in qa if r.persona_id is None]
    rows += [replace(r, persona_id=vid) for vid, (pid, _) in views.items() for r in own if r.persona_id == pid]
    return rows


@dataclass
class AttributeResult:
    """What `attribute_vectors` built: per direction key, the mean minimal-pair delta
    `(num_layers, hidden_size)`, its manifest entry, the population difference of means of
    the personas' own views (value_to personas minus value_from ones; what the minimal pairs
    correct), and the extraction's outcomes (with a failed view nothing is averaged: the
    dicts stay empty)."""

    directions: list[Direction]
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    population: dict[str, np.ndarray] = field(default_factory=dict)
    outcomes: list[PersonaOutcome] = field(default_factory=list)
    store: TraitVectorStore | None = None  # where the vectors were saved


def auc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of scores (the Mann-Whitney statistic; ties count half)."""
    diff = positives[:, None] - negatives[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def layer_stats(acts_from: np.ndarray, acts_to: np.ndarray) -> dict[str, dict[str, float]]:
    """Per layer (keyed by the layer as text, as the reference writes them): the AUC of both
    values' views projected on the mean delta's unit vector, the typical residual norm, and
    the mean delta's norm (the gap)."""
    auc_by, norm_by, gap_by = {}, {}, {}
    for layer in range(acts_from.shape[1]):
        x_from, x_to = acts_from[:, layer].astype(np.float64), acts_to[:, layer].astype(np.float64)
        d = (x_to - x_from).mean(0)
        gap = float(np.linalg.norm(d))
        unit = d / (gap + 1e-12)
        auc_by[str(layer)] = auc(x_from @ unit, x_to @ unit)
        norm_by[str(layer)] = float(np.linalg.norm(np.concatenate([x_from, x_to]), axis=1).mean())
        gap_by[str(layer)] = gap
    return {"auc_by_layer": auc_by, "act_norm_by_layer": norm_by, "gap_norm_by_layer": gap_by}


def attribute_vectors(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    personas: Sequence[Persona],
    template: AttributeTemplate,
    qa_pairs: Sequence[QAPair],
    attributes: Sequence[str] = (),
    *,
    all_binary: bool = False,
    reference: Mapping[str, str] | None = None,
    mask_strategy: str = "persona_mean",
    model_name: str | None = None,
    output_dir: str | Path | None = None,
    n_train: int | None = None,
    force: bool = False,
    console: Console | None = None,
    progress: bool = True,
    **engine: Any,
) -> AttributeResult:
    """Minimal-pair attribute vectors (module doc), saved into the trait vector store
    `<output_dir>/trait_vectors` (persona-vectors' layout; default `$ARTIFACTS_DIR`), the
    views' persona vectors into `<output_dir>/attribute_views` (a rerun reuses them: resume).
    `engine` goes to `pvrs.extract` (`batch_tokens`, `prefix_reuse`, `vllm`, `ray`, `load`, ...)."""
    from pvrs.extraction.driver import extract
    from pvrs.extraction.samples import SampleSource
    from pvrs.paths import artifacts_dir
    from pvrs.store import PersonaVectorStore
    from pvrs.store.traits import TRAIT_VECTORS_DIR, TraitVectorStore

    directions = plan_directions(personas, template, attributes, all_binary=all_binary, reference=reference)
    views = build_views(personas, template, directions)
    source = SampleSource(view_qa(qa_pairs, views), n_train=n_train)
    for _, view in views.values():
        if not source.selected(view):
            raise InputError(f"persona {view.id!r} gets no QA rows; give shared QA rows (no persona_id)")
    root = Path(output_dir) if output_dir is not None else artifacts_dir()
    name = model_name or str(getattr(model.config, "name_or_path", "") or type(model).__name__)
    run = extract(
        model, tokenizer, [view for _, view in views.values()], source,
        variants=(VARIANT,), mask_strategies=(mask_strategy,), model_name=name,
        save_to=root / VIEWS_DIR, force=force, console=console, progress=progress, **engine,
    )  # fmt: skip
    result = AttributeResult(directions, outcomes=run.outcomes)
    failed = [o for o in run.outcomes if o.status == "failed"]
    if failed or run.stopped:
        return result  # nothing is averaged over a missing view; the caller reports why
    views_store = PersonaVectorStore(name, root_dir=root / VIEWS_DIR, mask_strategy=mask_strategy)
    traits = TraitVectorStore(name, root_dir=root / TRAIT_VECTORS_DIR, mask_strategy=mask_strategy)
    result.store = traits
    ids = [p.id for p in personas]
    originals = views_store.stack(ids, VARIANT).astype(np.float64)
    for d in directions:
        acts_from = views_store.stack([view_id(p, d.attribute, d.value_from) for p in personas], VARIANT)
        acts_to = views_store.stack([view_id(p, d.attribute, d.value_to) for p in personas], VARIANT)
        own = {p.id: str(p.attributes[d.attribute]) for p in personas}
        mean = (acts_to.astype(np.float64) - acts_from).mean(0).astype(np.float32)
        at = np.array([own[i] for i in ids])
        population = (originals[at == d.value_to].mean(0) - originals[at == d.value_from].mean(0)).astype(np.float32)
        entry = {
            "attribute": d.attribute, "value_from": d.value_from, "value_to": d.value_to, "positive": d.value_to,
            "n_personas": len(ids), **layer_stats(acts_from, acts_to),
            "population_cosine_by_layer": {str(i): _cosine(mean[i], population[i]) for i in range(mean.shape[0])},
            "persona_values": own, "template": template.text, "views": str(root / VIEWS_DIR),
        }  # fmt: skip
        traits.save(d.key, mean, entry, VARIANT)
        result.vectors[d.key], result.entries[d.key], result.population[d.key] = mean, entry, population
    return result


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(a.astype(np.float64) @ b / (na * nb)) if na and nb else 0.0
