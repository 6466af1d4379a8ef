"""Hostile command lines: every numeric flag is bounded by argparse (one line naming the
flag, exit 2), and the checks that need no model run before one loads."""

from __future__ import annotations

import pytest
from pvrs.cli import main


def refusal(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one error line of a command line argparse refuses with exit 2."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["extract", "--threads", "100000"], "argument --threads: '100000' must be at most"),
        (["extract", "--threads", "0"], "argument --threads: '0' must be at least 1"),
        (["steer", "--alpha", "1e38"], "argument --alpha: '1e38' is not in [-1e+06, 1e+06]"),
        (["export", "--alpha=-1e9"], "argument --alpha: '-1e9' is not in [-1e+06, 1e+06]"),
        (["eval", "--alpha", "1", "1e30"], "argument --alpha: '1e30' is not in [-1e+06, 1e+06]"),
        (["eval", "--tau", "1e30"], "argument --tau: '1e30' is not in [-1e+06, 1e+06]"),
        (["steer", "--seed", "1e23"], "argument --seed: '1e23' is not a whole number"),
        (["steer", "--seed", str(10**23)], f"argument --seed: '{10**23}' must be at most 4294967295"),
        (["extract", "--seed", "-1"], "argument --seed: '-1' must be at least 0"),
        (["push", "--row-group-mb", "1e300"], "argument --row-group-mb: '1e300' is not in (0, 1e+06]"),
        (["push", "--file-mb", "0"], "argument --file-mb: '0' is not in (0, 1e+06]"),
        (["preview", "-n", "-1"], "argument -n: '-1' must be at least 1"),
        (["extract", "--n-train", "0"], "argument --n-train: '0' must be at least 1"),
        (["extract", "--sample-size", "-3"], "argument --sample-size: '-3' must be at least 1"),
        (["extract", "--max-new-tokens", str(2**40)], f"argument --max-new-tokens: '{2**40}' must be at most 2147483647"),
        (["extract", "--gpu-memory-utilization", "2"], "argument --gpu-memory-utilization: '2' is not in (0, 1]"),
        (["import", "--num-layers", "-1"], "argument --num-layers: '-1' must be at least 1"),
        (["steer", "--temperature", "-1"], "argument --temperature: '-1' is not in [0, 100]"),
        (["chat", "--top-p", "5"], "argument --top-p: '5' is not in (0, 1]"),
        (["steer", "--top-p", "0"], "argument --top-p: '0' is not in (0, 1]"),
        (["chat", "--cap-quantile", "1.5"], "argument --cap-quantile: '1.5' is not in [0, 1]"),
        (["judge", "--timeout", "1e300"], "argument --timeout: '1e300' is not in (0, 86400]"),
        (["judge", "--retries", "-1"], "argument --retries: '-1' must be at least 0"),
        (["analyze", "--folds", "1"], "argument --folds: '1' must be at least 2"),
        (["analyze", "--neighbours", "0"], "argument --neighbours: '0' must be at least 1"),
        (["analyze", "--focus-layer", "-2"], "argument --focus-layer: '-2' must be at least 0"),
    ],
)
def test_numeric_flags_are_bounded(argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    line = refusal(argv, capsys)
    assert line.startswith(f"pvrs {argv[0]}: error: {expected}")
