"""`pvrs validate`: the typed result of the Rust tree check (`rust/manifest/`)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Problem:
    path: str
    severity: str  # "error" or "warning"
    kind: str  # stable category, e.g. "missing_tensor", "bad_header", "non_finite"
    message: str

    def __str__(self) -> str:
        return f"{self.severity.upper():7} {self.path}: {self.message} [{self.kind}]"


@dataclass(frozen=True)
class ValidationReport:
    root: str
    deep: bool
    variant_dirs: int
    personas: int
    files_checked: int
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity != "error"]

    @property
    def ok(self) -> bool:
        """True when there is no error (warnings allowed)."""
        return not self.errors

    def summary(self) -> str:
        checks = "headers, sha256 and NaN/Inf" if self.deep else "headers"
        return (
            f"{self.root}: {self.variant_dirs} variant folder(s), {self.personas} persona(s), "
            f"{self.files_checked} file(s) checked ({checks}): {len(self.errors)} error(s), "
            f"{len(self.warnings)} warning(s)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def validate(path: str | os.PathLike[str], *, deep: bool = False) -> ValidationReport:
    """Check an artifacts tree or one variant folder and report every problem: manifest
    shape and types, safe persona ids, missing and orphan tensors, safetensors headers,
    dtypes and shapes; `deep` adds the sha256 check and a NaN/Inf scan. Raises only when
    `path` itself cannot be read."""
    from pvrs import _core

    raw = _core.validate_tree(os.fspath(path), deep)
    problems = [Problem(**p) for p in raw.pop("problems")]
    return ValidationReport(**raw, problems=problems)
