"""LoRA SFT of chat rows with trl's `SFTTrainer`, optionally with preventative steering or
ablation (`pvrs.training.prevent`) on the training forwards.

Each row's `messages` end with the assistant answer trained on: the conversation before it is
the prompt and the answer's tokens (through the template's end-of-turn) are the only labels
(trl's prompt-completion format). A run's folder holds `settings.json`, `loss.csv`,
`checkpoints/checkpoint-N` (resumable) and, when done, `adapter/` (the LoRA adapter and the
tokenizer; load it with `peft.PeftModel.from_pretrained(base, folder)` or `pvrs shift --tuned`).

Ctrl-C stops at the end of the current step, saves a checkpoint and raises KeyboardInterrupt;
`resume=True` continues from the newest checkpoint with the same settings."""

from __future__ import annotations

import json
import signal
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from pvrs.errors import InputError
from pvrs.jsonio import read_json
from pvrs.training.models import require
from pvrs.training.prevent import PreventativeSteering, PreventativeSteeringCallback

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedTokenizerBase

    from pvrs.steering.screen import Conversation

CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"
SETTINGS = "settings.json"
LOSS_CSV = "loss.csv"


@dataclass(frozen=True)
class TrainConfig:
    """What decides a run; saved in `settings.json` with the steerings and checked on resume."""

    lora_r: int = 8
    lora_alpha: int = 16
    target_modules: str = "all-linear"
    learning_rate: float = 5e-4
    batch_size: int = 4
    epochs: float = 1.0
    max_steps: int = -1  # -1: `epochs` decides
    save_steps: int = 50
    seed: int = 0
    use_cpu: bool = False
    run: dict[str, Any] = field(default_factory=dict)  # what else decides it: model, data, steering specs


def prompt_completion(conversations: Sequence[Conversation], source: str) -> list[dict[str, Any]]:
    """trl's conversational prompt-completion rows: everything before the last message, and
    the last message, which must be an assistant answer after at least one other turn."""
    rows = []
    for c in conversations:
        roles = [m["role"] for m in c.messages]
        if "assistant" not in roles:
            raise InputError(f"{source} row {c.index}: no assistant turn; each row needs the answer to train on")
        if roles[-1] != "assistant" or len(roles) < 2:
            raise InputError(
                f"{source} row {c.index}: the last message must be the assistant's answer, after the prompt's turns"
            )
        rows.append({"prompt": c.messages[:-1], "completion": c.messages[-1:]})
    return rows


class _LossCurve(TrainerCallback):  # type: ignore[misc]
    """`loss.csv` rewritten at each log (step, epoch, loss, learning rate), from the trainer's
    history, which a resumed run restores from its checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        write_loss_curve(self.path, state.log_history)


def write_loss_curve(path: Path, history: Sequence[dict[str, Any]]) -> None:
    from pvrs.store import atomic_write_bytes

    lines = ["step,epoch,loss,learning_rate"]
    lines += [f"{e['step']},{e.get('epoch', '')},{e['loss']},{e.get('learning_rate', '')}" for e in history if "loss" in e]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


class _StopOnInterrupt(TrainerCallback):  # type: ignore[misc]
    """The first Ctrl-C asks for a checkpoint and a stop at the end of the step."""

    def __init__(self) -> None:
        self.interrupted = False

    def handler(self, _signum: int, _frame: Any) -> None:
        self.interrupted = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.interrupted:
            control.should_save = True
            control.should_training_stop = True


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("pvrs", "torch", "transformers", "peft", "trl")}


def check_out(out: Path, resume: bool) -> None:
    """A fresh run needs a folder without one (nothing saved is overwritten); a resumed run
    needs a checkpoint."""
    from transformers.trainer_utils import get_last_checkpoint

    checkpoints = out / CHECKPOINTS
    last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if resume and last is None:
        raise InputError(f"--resume: no checkpoint in {checkpoints}; run without --resume to start")
    if not resume and (last is not None or (out / ADAPTER).exists()):
        raise InputError(f"--out {out} already holds a run; pass --resume to continue it, or another --out")


def _check_settings(out: Path, settings: dict[str, Any], resume: bool) -> None:
    check_out(out, resume)
    if resume:
        saved = read_json(out / SETTINGS, f"--resume: {out / SETTINGS} (the run's settings)")
        before = saved.get("config", {}) if isinstance(saved, dict) else {}
        changed = sorted(k for k in settings if before.get(k) != settings[k])
        if changed:
            raise InputError(f"--resume: {', '.join(changed)} differ from {out / SETTINGS}; resume with the same settings")


def finetune(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Conversation],
    out: str | Path,
    config: TrainConfig | None = None,
    steerings: Sequence[PreventativeSteering] = (),
    *,
    resume: bool = False,
    source: str = "data",
    callbacks: Sequence[TrainerCallback] = (),
) -> Path:
    """Train a LoRA adapter on `conversations` into `out`; the adapter folder is returned."""
    require("peft", "trl", "datasets", what="fine-tuning")
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from pvrs.store import atomic_write_bytes

    out = Path(out)
    config = config or TrainConfig()
    rows = prompt_completion(conversations, source)
    settings = json.loads(json.dumps(asdict(config)))  # as read back from JSON: tuples become lists
    _check_settings(out, settings, resume)
    out.mkdir(parents=True, exist_ok=True)
    record = {"config": settings, "versions": _versions()}
    atomic_write_bytes(out / SETTINGS, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
    args = SFTConfig(
        output_dir=str(out / CHECKPOINTS), max_steps=config.max_steps, num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size, learning_rate=config.learning_rate,
        save_steps=config.save_steps, logging_steps=1, seed=config.seed, use_cpu=config.use_cpu,
        report_to=[], completion_only_loss=True, disable_tqdm=True,
    )
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, target_modules=config.target_modules,
                      task_type="CAUSAL_LM")
    stop, steering = _StopOnInterrupt(), PreventativeSteeringCallback(*steerings)
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer, peft_config=lora,
        callbacks=[steering, _LossCurve(out / LOSS_CSV), stop, *callbacks],
    )
    previous = signal.signal(signal.SIGINT, stop.handler)
    try:
        trainer.train(resume_from_checkpoint=True if resume else None)
    finally:
        signal.signal(signal.SIGINT, previous)
        steering.remove()  # the hooks, also after an error
    if stop.interrupted:
        raise KeyboardInterrupt
    adapter = out / ADAPTER
    trainer.save_model(str(adapter))
    tokenizer.save_pretrained(str(adapter))
    return adapter
