"""Files pvrs writes get the mode the umask gives (as `open()` would), not the 0o600 of
`mkstemp` or safetensors' `save_file`: a shared artifact folder stays readable by the group."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from pvrs.analysis import assistant_axis
from pvrs.analysis.probes import ProbeArtifact, save_probe_artifact
from pvrs.analysis.tables import axis_tables
from pvrs.store import PersonaVectorStore, atomic_write_bytes
from pvrs.store.controlvector import write_control_vector


def _store_vector(tmp: Path) -> Path:
    store = PersonaVectorStore("org/m", root_dir=tmp)
    store.save("a", "templated", np.ones((2, 3), np.float32), name="A", sample_ids=["q"])
    return store.variant_dir("templated") / "a.safetensors"


def _bytes(tmp: Path) -> Path:
    atomic_write_bytes(tmp / "x.bin", b"x")
    return tmp / "x.bin"


def _control_vector(tmp: Path) -> Path:
    return write_control_vector(np.ones((4, 3), np.float32), tmp / "cv.gguf", [1, 2])


def _axis(tmp: Path) -> Path:
    x = np.random.default_rng(0).normal(size=(3, 2, 4)).astype(np.float32)
    axis = assistant_axis(x, ["baseline_assistant", "a", "b"], [0, 1])
    (tmp / "tables").mkdir()
    return axis_tables(axis, ["Assistant", "A", "B"], tmp)[1]


def _probe(tmp: Path) -> Path:
    art = ProbeArtifact("x", "logreg", "classification", 0, np.ones((1, 3)), np.zeros(1), [0, 1], {})
    return save_probe_artifact(art, tmp / "probe") / "weights.safetensors"


WRITERS: dict[str, Callable[[Path], Path]] = {
    "store": _store_vector,
    "atomic_write_bytes": _bytes,
    "export_gguf": _control_vector,
    "assistant_axis": _axis,
    "probe_weights": _probe,
}


@pytest.fixture(params=[0o002, 0o077])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


@pytest.mark.parametrize("writer", WRITERS)
def test_written_files_follow_the_umask(writer: str, umask: int, tmp_path: Path) -> None:
    path = WRITERS[writer](tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
