"""The GPU suite's dry run (`benches/gpu_suite.sh --dry-run`): the code a GPU session runs,
on CPU with tiny configs, so CI catches a broken suite before a device session spends its
minutes on it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny import make_tokenizer

SUITE = Path(__file__).resolve().parents[1] / "benches" / "gpu_suite.sh"


def run_suite(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SUITE), *args], env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_dry_run_writes_every_figure_into_one_file(tmp_path: Path) -> None:
    tokenizer = tmp_path / "tokenizer"
    make_tokenizer("chatml").save_pretrained(tokenizer)
    out = tmp_path / "results.md"
    proc = run_suite("--dry-run", "--out", str(out), "--tokenizer", str(tokenizer))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    for figure in (
        "## extraction: tiny",
        "/ bare decoder",  # each mode against the bare decoder forward
        "pvrs-noprefix:",
        "pvrs / reference method",
        "## steering overhead during generation: tiny",
        "steer 2 layers",
        "## generation and capture: vLLM vs transformers",
        "## steered generation: vLLM vs transformers (pvrs eval's grid)",
    ):
        assert figure in text, figure


def test_an_unknown_argument_is_one_line_and_exit_2() -> None:
    proc = run_suite("--gpu")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "gpu_suite.sh: unknown argument '--gpu'; use --dry-run, --out FILE, --tokenizer DIR"
