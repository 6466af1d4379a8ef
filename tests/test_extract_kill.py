"""A real `pvrs extract` killed at a random moment loses at most the persona in flight and
leaves no half-written tensor or manifest; a rerun resumes where it stopped."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pvrs.engines.models import model_dir_name
from safetensors.numpy import load_file

from tests.test_extract import tiny_model_dir  # noqa: F401  (fixture)

N_PERSONAS = 120


def _saved(variant_dir: Path) -> dict:
    manifest = variant_dir / "manifest.json"
    return json.loads(manifest.read_text())["personas"] if manifest.exists() else {}


def test_killed_run_leaves_a_consistent_store_and_resumes(tiny_model_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    personas = tmp_path / "personas.jsonl"
    personas.write_text("".join(json.dumps({"id": f"p{i:03d}", "name": f"P{i}", "templated": f"You are persona number {i}."}) + "\n" for i in range(N_PERSONAS)))
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"qid": f"q{j}", "question": f"Question {j}?", "answer": f"Answer {j}, I think."}) + "\n" for j in range(4)))
    out = tmp_path / "store"
    argv = [sys.executable, "-m", "pvrs", "extract", "--model", str(tiny_model_dir), "--personas", str(personas),
            "--qa", str(qa), "--variants", "templated", "--output-dir", str(out)]
    variant_dir = out / model_dir_name(str(tiny_model_dir)) / "answer_mean" / "templated"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if len(_saved(variant_dir)) >= 3:
                break
        except (json.JSONDecodeError, OSError):
            raise AssertionError("a reader saw a half-written manifest") from None
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed; raise N_PERSONAS"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    saved = _saved(variant_dir)
    assert 3 <= len(saved) < N_PERSONAS
    tensors = {p.stem for p in variant_dir.glob("*.safetensors")}
    assert set(saved) <= tensors <= set(saved) | {f"p{i:03d}" for i in range(N_PERSONAS)}
    assert len(tensors - set(saved)) <= 1  # at most the persona in flight
    for pid, entry in saved.items():
        path = variant_dir / f"{pid}.safetensors"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
        assert load_file(path)["activations"].shape == (4, 64)

    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert f"{len(saved)} skipped" in done.stdout.replace("\n", " ")  # the summary is on stdout
    assert len(_saved(variant_dir)) == N_PERSONAS
