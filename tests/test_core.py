"""The native module: errors arrive as typed pvrs exceptions, panics are contained, the GIL is released."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pvrs
import pytest
from pvrs import _core


def test_sha256_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    data = bytes(range(256)) * 5000
    path.write_bytes(data)
    assert _core.sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert _core.sha256_file(str(path)) == hashlib.sha256(data).hexdigest()


def test_rust_io_error_is_a_typed_pvrs_exception(tmp_path: Path) -> None:
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(pvrs.PvrsIOError, match=r"nope\.safetensors") as info:
        _core.sha256_file(missing)
    assert isinstance(info.value, pvrs.PvrsError)
    assert isinstance(info.value, OSError)


def test_panic_is_contained_as_internal_error() -> None:
    with pytest.raises(pvrs.InternalError, match="deliberate panic"):
        _core._panic_for_tests()


def test_heavy_call_releases_the_gil(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    with path.open("wb") as f:
        chunk = b"\x5a" * (1 << 20)
        for _ in range(384):
            f.write(chunk)
    ticks = 0
    done = threading.Event()

    def spin() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            time.sleep(0)

    worker = threading.Thread(target=spin)
    worker.start()
    try:
        time.sleep(0.05)
        before = ticks
        start = time.perf_counter()
        _core.sha256_file(path)
        elapsed = time.perf_counter() - start
        during = ticks - before
    finally:
        done.set()
        worker.join()
    # With the GIL held for the whole hash, the spinner could not run at all meanwhile.
    assert elapsed > 0.05, "file too small to observe the GIL"
    assert during > 100


def test_build_info() -> None:
    info = _core.build_info()
    assert info["version"] == pvrs.__version__
    assert info["profile"] in {"debug", "release"}
    assert "python" in info["features"]


def test_source_tree_without_the_compiled_module_says_how_to_build(tmp_path: Path) -> None:
    """`PYTHONPATH=python` on a clean checkout: one line naming the fix, not a circular import."""
    source = Path(pvrs.__file__).parent
    shutil.copytree(
        source,
        tmp_path / "pvrs",
        ignore=shutil.ignore_patterns("_core*.so", "_core*.pyd", "__pycache__"),
    )
    result = subprocess.run(
        [sys.executable, "-c", "import pvrs"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "maturin develop --release" in result.stderr
    assert "circular import" not in result.stderr.splitlines()[-1]
