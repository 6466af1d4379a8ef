from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys

import pvrs
import pytest
from pvrs.cli import main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"pvrs {pvrs.__version__}"


def test_doctor_json_reports_versions_and_paths(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["pvrs"] == pvrs.__version__
    assert info["native"]["profile"] in {"debug", "release"}
    assert "smollm2-135m" in info["builtin_models"]
    assert isinstance(info["cuda_available"], bool)
    assert info["artifacts_dir"].endswith("activations")


def test_doctor_table_runs_as_a_console_script() -> None:
    proc = subprocess.run([sys.executable, "-m", "pvrs", "doctor"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "native module" in proc.stdout


def test_doctor_piped_prints_long_paths_whole(tmp_path) -> None:
    root = tmp_path / ("x" * 120) / "artifacts"
    env = {**os.environ, "ARTIFACTS_DIR": str(root)}
    proc = subprocess.run([sys.executable, "-m", "pvrs", "doctor"], capture_output=True, text=True, check=False, env=env)
    assert proc.returncode == 0, proc.stderr
    assert str(root / "activations") in proc.stdout


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: pvrs" in capsys.readouterr().out


def test_doctor_imports_torch_only_where_a_gpu_driver_is_visible() -> None:
    """Importing torch takes seconds; versions come from package metadata, and without a GPU
    driver there is no device to ask it about."""
    code = (
        "import json, sys; from pvrs.cli import doctor; doctor._gpu_driver_visible = lambda: False; "
        "info = doctor.report(); print(json.dumps(['torch' in sys.modules, info['cuda_available'], info['torch']]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    imported, cuda, version = json.loads(proc.stdout)
    assert not imported and cuda is False
    assert version == importlib.metadata.version("torch")


def test_the_pvrs_command_prints_a_warning_as_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Not Python's `FILE:LINE: UserWarning: ...` plus the code line: one line, as errors are."""
    import warnings

    import pvrs.cli as cli

    def warns() -> int:
        warnings.warn("an odd input, read anyway", stacklevel=1)
        return 0

    monkeypatch.setattr(cli, "main", warns)
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # put back after the test
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert cli.entry() == 0
    assert capsys.readouterr().err == "pvrs: warning: an odd input, read anyway\n"
