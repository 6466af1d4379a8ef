"""A trait file from a description (`pvrs trait --describe`, after the Janus toolkit's
`create_persona_from_description` and persona_vectors' data-generation step): a generator model
writes the positive/negative instruction pairs, the extraction questions, held-out evaluation
questions and the rubric, in persona_vectors' trait-file format. Its reply is checked against a
schema (counts, no duplicates, no question both extracted from and evaluated on, `{question}`
and `{answer}` in the rubric); a reply that fails is asked again, told what was wrong, and the
last failure is one `GenerationError` line. The prompt is pvrs's own (`describe_prompt.txt` in
the package data), replaceable by the user's."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvrs.errors import GenerationError, InputError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from pvrs.judge.endpoint import EndpointJudge

# A conversation in, the reply text out: an endpoint's `complete` or a local model's.
Generator = Callable[[Sequence[Mapping[str, str]]], str]

PROMPT_NAME = "describe_prompt.txt"
PROMPT_FIELDS = ("description", "name", "pairs", "questions", "eval_questions")
DEFAULT_ATTEMPTS = 3
MAX_TOKENS = 4096  # room for 5 pairs, 40 questions and a rubric
KEYS = ("instruction", "questions", "eval_questions", "eval_prompt")


@dataclass(frozen=True)
class Counts:
    """How many of each the file must hold (persona_vectors: 5 pairs, 40 questions split 20/20)."""

    pairs: int = 5
    questions: int = 20
    eval_questions: int = 20


def load_prompt(path: str | Path | None = None) -> str:
    """The generation prompt: pvrs's, or the file at `path` (`--describe-prompt`), which must
    hold `{description}` where the description goes."""
    if path is None:
        return resources.files("pvrs.data").joinpath(PROMPT_NAME).read_text(encoding="utf-8")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--describe-prompt {path}: cannot read ({exc})") from None
    if "{description}" not in text:
        raise InputError(f"--describe-prompt {path}: the prompt has no {{description}} placeholder; add one where the description goes")
    return text


def render_prompt(template: str, description: str, name: str, counts: Counts) -> str:
    """The prompt with its placeholders filled; other braces (JSON examples, the rubric's
    `{question}`) stay as written."""
    values = {"description": description, "name": name, "pairs": str(counts.pairs), "questions": str(counts.questions),
              "eval_questions": str(counts.eval_questions)}
    return re.sub(r"\{(" + "|".join(PROMPT_FIELDS) + r")\}", lambda m: values[m[1]], template)


def parse_reply(reply: str) -> object:
    """The JSON object a reply holds: the whole reply, or the span from its first `{` to its
    last `}` (a code fence or a sentence around it is tolerated). ValueError when there is none."""
    start, end = reply.find("{"), reply.rfind("}")
    if start < 0 or end < start:
        raise ValueError("it holds no JSON object")
    try:
        return json.loads(reply[start : end + 1])
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"its JSON does not parse ({' '.join(str(exc).split())})") from None


def _key(text: str) -> str:
    """What makes two questions the same: case and spacing aside."""
    return " ".join(text.casefold().split())


def _strings(data: Mapping[str, Any], key: str, count: int) -> tuple[list[str], list[str]]:
    """`data[key]` as `count` distinct non-empty strings, and the problems found."""
    value = data.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        return [], [f"'{key}' must be a list of non-empty strings"]
    problems = [] if len(value) == count else [f"'{key}' has {len(value)} items, not {count}"]
    seen: set[str] = set()
    for v in value:
        if _key(v) in seen:
            problems.append(f"'{key}' repeats {v!r}")
            break
        seen.add(_key(v))
    return list(value), problems


def check_trait_data(data: object, counts: Counts = Counts()) -> list[str]:
    """What keeps `data` from being a valid trait file with `counts` (empty: nothing)."""
    if not isinstance(data, dict):
        return ["the reply must be one JSON object with the keys " + ", ".join(KEYS)]
    problems = [f"the key '{k}' is missing" for k in KEYS if k not in data]
    pairs = data.get("instruction")
    if "instruction" in data:
        if not isinstance(pairs, list) or not all(
            isinstance(p, dict) and all(isinstance(p.get(s), str) and p[s].strip() for s in ("pos", "neg")) for p in pairs
        ):
            problems.append("'instruction' must be a list of {\"pos\": ..., \"neg\": ...} objects of non-empty strings")
        else:
            if len(pairs) != counts.pairs:
                problems.append(f"'instruction' has {len(pairs)} pairs, not {counts.pairs}")
            if any(_key(p["pos"]) == _key(p["neg"]) for p in pairs):
                problems.append("an instruction pair has the same 'pos' and 'neg'")
            for side in ("pos", "neg"):
                if len({_key(p[side]) for p in pairs}) < len(pairs):
                    problems.append(f"two instruction pairs have the same '{side}'")
    questions, found = _strings(data, "questions", counts.questions) if "questions" in data else ([], [])
    held_out, found_eval = _strings(data, "eval_questions", counts.eval_questions) if "eval_questions" in data else ([], [])
    problems += found + found_eval
    both = {_key(q) for q in questions} & {_key(q) for q in held_out}
    if both:
        first = next(q for q in held_out if _key(q) in both)
        problems.append(f"{len(both)} question(s) are in both 'questions' and 'eval_questions', e.g. {first!r}")
    prompt = data.get("eval_prompt")
    if "eval_prompt" in data:
        if not isinstance(prompt, str) or not prompt.strip():
            problems.append("'eval_prompt' must be the rubric, a non-empty string")
        else:
            problems += [f"'eval_prompt' lacks the placeholder {{{f}}}" for f in ("question", "answer") if "{" + f + "}" not in prompt]
    return problems


def check_description(description: str) -> None:
    if not description.strip():
        raise InputError("--describe: the description is empty; describe the trait, e.g. --describe \"formal and professional\"")


def describe_trait(
    generator: Generator,
    description: str,
    name: str,
    *,
    counts: Counts = Counts(),
    prompt: str | None = None,
    attempts: int = DEFAULT_ATTEMPTS,
    generator_name: str = "the generator",
    on_attempt: Callable[[int, list[str]], object] | None = None,
) -> dict[str, Any]:
    """The trait file (a dict in persona_vectors' format, plus `name`, `description` and
    `eval_questions`) that `generator` writes for `description`. A reply that fails
    `check_trait_data` is asked again (up to `attempts` in all), the model told what was wrong;
    `on_attempt(n, problems)` hears each failed attempt. `prompt` is the template (default
    pvrs's). Raises GenerationError, one line, when no attempt gives a valid file."""
    check_description(description)
    if attempts < 1:
        raise InputError(f"--describe-attempts must be >= 1, got {attempts}")
    messages = [{"role": "user", "content": render_prompt(load_prompt() if prompt is None else prompt, description, name, counts)}]
    problems: list[str] = []
    for n in range(1, attempts + 1):
        reply = generator(messages)
        try:
            data = parse_reply(reply)
        except ValueError as exc:
            problems = [f"the reply is not a JSON object: {exc}"]
        else:
            problems = check_trait_data(data, counts)
            if not problems:
                assert isinstance(data, dict)
                return {"name": name, "description": description, **{k: data[k] for k in KEYS}}
        if on_attempt is not None:
            on_attempt(n, problems)
        messages += [{"role": "assistant", "content": reply},
                     {"role": "user", "content": "That reply is not a valid trait file: " + "; ".join(problems)
                      + ". Reply again with the whole corrected JSON object only."}]
    raise GenerationError(f"{generator_name} wrote no valid trait file in {attempts} attempt(s); the last reply: "
                          + "; ".join(problems) + " (retry, raise --describe-attempts, or use another --generator)")


def check_new(path: Path, force: bool = False) -> None:
    """Refuse to write over an existing trait file unless `force` (checked before generating too)."""
    if path.exists() and not force:
        raise InputError(f"{path} exists (a trait file written before?); run `pvrs trait {path}` to use it, "
                         "or pass --force to write a new one over it")


def save_trait_file(data: Mapping[str, Any], path: str | Path, force: bool = False) -> Path:
    """Write a trait file atomically; an existing file is kept unless `force`."""
    from pvrs.store import atomic_write_bytes

    path = Path(path)
    check_new(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(data, indent=1, ensure_ascii=False) + "\n").encode())
    return path


def endpoint_generator(judge: EndpointJudge, max_tokens: int = MAX_TOKENS) -> Generator:
    """A generator behind an OpenAI-compatible endpoint (`EndpointJudge.complete`)."""
    return lambda messages: judge.complete(messages, max_tokens)


def local_generator(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, max_tokens: int = MAX_TOKENS) -> Generator:
    """A generator that is a local transformers model, greedy (deterministic)."""
    from pvrs.extraction.generate import SamplingConfig, generate

    config = SamplingConfig(max_new_tokens=max_tokens, temperature=0.0)
    return lambda messages: generate(model, tokenizer, messages, config)
