"""What an extract run produced, and the one place its vectors are written to the store,
whichever engine computed them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pvrs.engines.jobs import Persona, QAPair
from pvrs.engines.jobs import PersonaOutcome as PersonaOutcome
from pvrs.errors import PvrsError
from pvrs.extraction.masks import DEFAULT_STRATEGY, MaskStrategy
from pvrs.store.layout import VectorNotFoundError

if TYPE_CHECKING:
    from pvrs.engines.transformers import SampleMeans
    from pvrs.extraction.chat import PreparedInput
    from pvrs.store import PersonaVectorStore


@dataclass
class Job:
    """One persona x variant planned for extraction: its samples, rendered and masked."""

    persona: Persona
    variant: str
    samples: list[QAPair]
    prepared: list[PreparedInput]
    strategies: list[MaskStrategy]
    digest: str
    note: str = ""

    @property
    def sample_ids(self) -> list[str]:
        return [p.sample_id for p in self.prepared]

    @property
    def input_ids(self) -> list[np.ndarray]:
        return [np.asarray(p.input_ids, dtype=np.int64) for p in self.prepared]

    @property
    def masks(self) -> list[np.ndarray]:
        """Per sample, one mask row per strategy: what `sample_means` takes."""
        return [np.stack([p.token_masks[s] for s in self.strategies]) for p in self.prepared]


@dataclass
class ExtractionResult:
    """Vectors keyed by (persona_id, variant, strategy), each (len(layers), hidden_size)."""

    layers: list[int]
    vectors: dict[tuple[str, str, MaskStrategy], np.ndarray] = field(default_factory=dict)
    sample_ids: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    sample_vectors: dict[tuple[str, str, MaskStrategy], np.ndarray] = field(default_factory=dict)
    outcomes: list[PersonaOutcome] = field(default_factory=list)
    tokens: int = 0  # conversation tokens (a reused prefix counted in each conversation)
    tokens_computed: int = 0  # tokens the forwards encoded (a reused prefix once per persona)
    host_bytes: int = 0  # result bytes that left the model's device (per-sample means only if saved)
    seconds: float = 0.0
    replicas: dict[str, int] = field(default_factory=dict)  # Ray runs: personas computed per replica
    stopped: str = ""  # why the run stopped early (a write failed: disk full, ...); "" if it did not

    def vector(self, persona_id: str, variant: str = "templated", strategy: str | MaskStrategy = DEFAULT_STRATEGY) -> np.ndarray:
        key = (persona_id, variant, MaskStrategy(str(strategy)))
        if key in self.vectors:
            return self.vectors[key]
        # A resumed run skips what the store holds: say so rather than a bare KeyError.
        what = f"{persona_id!r} ({variant}, {key[2].value})"
        outcome = next((o for o in self.outcomes if (o.persona_id, o.variant) == key[:2]), None)
        if outcome is not None and outcome.status == "skipped":
            raise VectorNotFoundError(
                f"{what} was skipped, already saved with the same samples: load it with "
                "PersonaVectorStore(model, mask_strategy=...).load(persona_id, variant), or extract with force=True"
            )
        why = f": {outcome.reason}" if outcome is not None and outcome.reason else ""
        raise VectorNotFoundError(f"{what} was not extracted in this run{why}")

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def tokens_per_second(self) -> float:
        """Conversation tokens per second: the same count with or without prefix reuse."""
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def computed_share(self) -> float:
        """The part of the conversation tokens the forwards encoded (below 1 with prefix reuse)."""
        return self.tokens_computed / self.tokens if self.tokens else 1.0


class Saver:
    """Records each computed job in the result and, when saving, in the store: the one place
    vectors are written, whichever engine computed them."""

    def __init__(
        self,
        stores: dict[MaskStrategy, PersonaVectorStore] | None,
        provenance: dict[str, Any],
        result: ExtractionResult,
        save_to: str | Path | None,
    ) -> None:
        self.stores, self.provenance, self.result, self.save_to = stores, provenance, result, save_to

    def save(self, job: Job, means: SampleMeans) -> bool:
        """False when the run must stop: a write failed with an OS error (disk full, file size
        limit, permissions), as every later save would; the personas saved so far stay valid."""
        result = self.result
        result.tokens_computed += means.tokens_computed
        result.host_bytes += means.host_bytes
        try:
            outcome = _store_job(job, means, self.stores, self.provenance, result)
        except PvrsError as exc:
            outcome = PersonaOutcome(job.persona.id, job.variant, "failed", str(exc))
        except OSError as exc:
            where = exc.filename or self.save_to or "the store"
            result.stopped = f"cannot write {where}: {exc.strerror or exc}"
            result.outcomes.append(PersonaOutcome(job.persona.id, job.variant, "failed", result.stopped))
            return False
        result.outcomes.append(outcome)
        return True


def _store_job(
    job: Job,
    means: SampleMeans,
    stores: dict[MaskStrategy, PersonaVectorStore] | None,
    provenance: dict[str, Any],
    result: ExtractionResult,
) -> PersonaOutcome:
    key = (job.persona.id, job.variant)
    result.sample_ids[key] = job.sample_ids
    for s_index, strategy in enumerate(job.strategies):
        vector = means.mean[s_index]
        result.vectors[(*key, strategy)] = vector
        per_sample = None if means.means is None else means.means[:, s_index]
        if per_sample is not None:
            result.sample_vectors[(*key, strategy)] = per_sample
        if stores is not None:
            store = stores[strategy]
            if per_sample is not None:  # before the manifest entry: a recorded persona has its samples
                store.save_samples(job.persona.id, job.variant, per_sample, job.sample_ids)
            else:
                store.drop_samples(job.persona.id, job.variant)
            store.save(
                job.persona.id, job.variant, vector,
                name=job.persona.name, sample_ids=job.sample_ids,
                n_tokens=int(means.counts[:, s_index].sum()), provenance=provenance,
                samples_sha256=job.digest,
            )
    return PersonaOutcome(
        job.persona.id, job.variant, "written", job.note, n_samples=len(job.prepared), n_tokens=means.conversation_tokens
    )
