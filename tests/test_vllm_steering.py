"""Steering inside stock vLLM (`pvrs.engines.vllm_steering`) gives the transformers hooks'
tokens: greedy, fp32, 32 new tokens, every kind at one layer and a band, at every position
mode, schedules and several edits in one spec, all requests of a model in one batch beside
unsteered ones (so no edit leaks into a neighbour), each equal to its solo transformers run
and visibly different from the plain text; prefix caching never reuses KV across steering.

Runs where vLLM is installed (the vLLM lane); one `vllm.LLM` per model (module fixtures)."""

from __future__ import annotations

import contextlib
import copy
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
pytestmark = pytest.mark.skipif(not HAVE_VLLM, reason="vLLM is not installed (see .ci/vllm-lane)")

NEW_TOKENS = 32
KINDS = ("add", "ablate", "mean_ablate", "cap", "floor")
POSITIONS = ("all", "prompt", "generated", "response")
QUESTIONS = (
    "Describe, in a few careful sentences, what you would pack for a week of sailing along a rocky coast.",
    "What is the capital of France, and why did it become the capital rather than another city?",
)


@dataclass
class Setup:
    """A model on both engines, its prompts (token ids), the vectors both see and the layers."""

    hf: Any
    llm: Any
    prompts: list[list[int]]
    vectors: dict[str, torch.Tensor]
    layer: int
    band: list[int]
    scale: torch.Tensor  # (L,) typical projection of the prompts' tokens on unit("mean")


def _hf_greedy(hf: Any, prompt: list[int], edits: list[dict[str, Any]]) -> list[int]:
    """Transformers' greedy continuation under the hooks of `edits` (vLLM-spec dicts)."""
    from pvrs.steering.interventions import ablate, cap, mean_ablate, steer

    config = copy.deepcopy(hf.generation_config)  # without EOS (`_start`), as vLLM's ignore_eos
    config.max_new_tokens, config.do_sample = NEW_TOKENS, False
    ids = torch.tensor([prompt])
    with contextlib.ExitStack() as stack:
        for e in edits:
            vector, layers, coef, pos = e["vector"], e["layers"], e.get("coef", 0.0), e.get("positions", "all")
            coefs = dict(zip(layers, coef if isinstance(coef, list) else [coef] * len(layers), strict=True))
            if e["kind"] == "add":
                stack.enter_context(steer(hf, vector, layers, coefs, pos, schedule=e.get("schedule")))
            elif e["kind"] == "ablate":
                stack.enter_context(ablate(hf, vector, layers, pos))
            elif e["kind"] == "mean_ablate":
                stack.enter_context(mean_ablate(hf, vector, layers, coefs, positions=pos))
            else:
                side = "upper" if e["kind"] == "cap" else "lower"
                stack.enter_context(cap(hf, vector, layers, coefs, side=side, positions=pos))
        with torch.no_grad():
            # an explicit mask: without one, generate masks every prompt token equal to the pad id
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
    return out[0, len(prompt):].tolist()


def _named(setup: Setup, edits: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The edits with vector names swapped for the tensors (for the transformers side)."""
    return [{**e, "vector": setup.vectors[e["vector"]]} for e in edits]


def _coef(setup: Setup, kind: str, layers: list[int]) -> list[float] | float:
    """A strength that visibly changes the text: per layer, in units of the prompts' typical
    projection on the `mean` direction (so per-layer coefficients are exercised too)."""
    s = [float(setup.scale[i]) for i in layers]
    return {"add": 0.6, "ablate": 0.0, "mean_ablate": [-3 * x for x in s],
            "cap": [-x for x in s], "floor": [3 * x for x in s]}[kind]


def _cases(setup: Setup) -> list[list[dict[str, Any]] | None]:
    cases: list[list[dict[str, Any]] | None] = []
    for kind in KINDS:
        for layers in ([setup.layer], setup.band):
            for pos in POSITIONS:
                vector = "random" if kind == "add" else "mean"
                edit = {"kind": kind, "vector": vector, "layers": layers, "positions": pos}
                if kind != "ablate":
                    edit["coef"] = _coef(setup, kind, layers)
                cases.append([edit])
    for schedule in ("linear:8", "first:4"):
        cases.append([{"kind": "add", "vector": "random", "layers": setup.band, "coef": 1.0, "schedule": schedule}])
    cases.append([  # two edits in order at shared layers
        {"kind": "add", "vector": "random", "layers": setup.band, "coef": 0.6, "positions": "response"},
        {"kind": "cap", "vector": "mean", "layers": [setup.layer], "coef": _coef(setup, "cap", [setup.layer])},
    ])
    return cases


def _start(model_dir: str, hf: Any, layer: int, band: list[int], texts: list[str], tokenizer: Any) -> Setup:
    from pvrs.engines.vllm_steering import SteerableLLM
    from pvrs.steering.residuals import capture

    # vLLM ignores EOS (ignore_eos), so transformers must too: always NEW_TOKENS tokens. Set on
    # the model, since generate fills a config's unset EOS from the model's own.
    hf.generation_config.eos_token_id = None
    prompts = [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    num_layers, hidden = hf.config.num_hidden_layers, hf.config.hidden_size
    with torch.no_grad(), capture(hf, list(range(num_layers))) as acts:
        for p in prompts:
            hf(torch.tensor([p]))
    # per layer: the mean residual (a direction the model uses a lot) and a random vector with
    # the residual's typical norm
    states = {i: torch.cat([a[0] for a in acts[i]]) for i in range(num_layers)}
    mean = torch.stack([states[i].mean(0) for i in range(num_layers)])
    norms = torch.stack([states[i].norm(dim=-1).median() for i in range(num_layers)])
    rand = torch.randn(num_layers, hidden, generator=torch.Generator().manual_seed(0))
    rand = rand / rand.norm(dim=-1, keepdim=True) * norms[:, None]
    unit = mean / mean.norm(dim=-1, keepdim=True)
    scale = torch.stack([(states[i] @ unit[i]).abs().median() for i in range(num_layers)])
    vectors = {"random": rand, "mean": mean}
    llm = SteerableLLM(model_dir, vectors, dtype="float32", max_model_len=512, enable_prefix_caching=True,
                       block_size=32, seed=0)
    return Setup(hf, llm, prompts, vectors, layer, band, scale)


def _params() -> Any:
    from vllm import SamplingParams

    return SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True, detokenize=False)


def _chat(tokenizer: Any, question: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)


@pytest.fixture(scope="module")
def builtin() -> Iterator[Setup]:
    from pvrs.engines import models
    from pvrs.engines.models import resolve_model_path

    hf, tokenizer = models.load("smollm2-135m", dtype="float32", device="cpu")
    setup = _start(str(resolve_model_path("smollm2-135m", None)), hf, 15, [12, 13, 14], [_chat(tokenizer, q) for q in QUESTIONS], tokenizer)
    yield setup
    setup.llm.close()


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    from pvrs.engines import models

    from tests.test_vllm import _save_tiny

    folder = _save_tiny(tmp_path_factory.mktemp("tiny-qwen2"), "qwen2", "qwen2.5")
    hf, tokenizer = models.load(str(folder), dtype="float32", device="cpu")
    setup = _start(str(folder), hf, 1, [1, 2], [_chat(tokenizer, q) for q in QUESTIONS], tokenizer)
    yield setup
    setup.llm.close()


def _check_one_batch(setup: Setup) -> None:
    """Every case on every prompt, plus plain and alpha-0 requests, in ONE generate call; each
    equals its solo transformers run, and every steered one differs from the plain text."""
    cases = _cases(setup)
    zero = [{"kind": "add", "vector": "random", "layers": setup.band, "coef": 0.0}]
    specs: list[Any] = []
    prompts: list[list[int]] = []
    for k, case in enumerate([None, zero, *cases]):
        # alternate the prompts so neighbours in the batch differ in length and steering
        prompts.append(setup.prompts[k % len(setup.prompts)])
        specs.append(case)
    for p in setup.prompts:  # an unsteered request per prompt at the end of the batch too
        prompts.append(p)
        specs.append(None)
    outs = setup.llm.generate(prompts, specs, _params())
    got = [list(o.outputs[0].token_ids) for o in outs]
    plain = {tuple(p): _hf_greedy(setup.hf, p, []) for p in setup.prompts}
    failures = []
    for prompt, spec, tokens in zip(prompts, specs, got, strict=True):
        expected = plain[tuple(prompt)] if spec is None else _hf_greedy(setup.hf, prompt, _named(setup, spec))
        assert len(tokens) == NEW_TOKENS
        if tokens != expected:
            failures.append(f"{spec}: vLLM {tokens} != transformers {expected}")
        elif spec is not None and spec is not zero and tokens == plain[tuple(prompt)]:
            failures.append(f"{spec}: the steered text equals the plain text (too weak to test)")
    assert not failures, "\n".join(failures)


@pytest.mark.slow
def test_builtin_model_every_intervention_in_one_batch_equals_transformers(builtin: Setup) -> None:
    _check_one_batch(builtin)


def test_tiny_qwen2_every_intervention_in_one_batch_equals_transformers(tiny_qwen2: Setup) -> None:
    _check_one_batch(tiny_qwen2)


def test_batched_requests_equal_their_solo_vllm_runs(tiny_qwen2: Setup) -> None:
    setup = tiny_qwen2
    a = [{"kind": "add", "vector": "random", "layers": setup.band, "coef": 0.6}]
    b = [{"kind": "floor", "vector": "mean", "layers": [setup.layer], "coef": _coef(setup, "floor", [setup.layer])}]
    specs = [a, None, b]
    prompts = [setup.prompts[0], setup.prompts[1], setup.prompts[1]]
    together = [list(o.outputs[0].token_ids) for o in setup.llm.generate(prompts, specs, _params())]
    alone = [list(setup.llm.generate([p], [s], _params())[0].outputs[0].token_ids) for p, s in zip(prompts, specs, strict=True)]
    assert together == alone
    assert together[1] != together[2]


def test_prefix_caching_never_reuses_kv_across_steering(tiny_qwen2: Setup) -> None:
    """The same prompt plain, then steered on its prompt tokens only, then steered again: the
    steered run must not read the plain KV (it would then equal the plain text), and the repeat
    of the same steering does hit the cache (so the first check is not vacuous)."""
    setup = tiny_qwen2
    prompt = setup.prompts[0]
    assert len(prompt) > 32  # at least one full cache block
    spec = [{"kind": "add", "vector": "random", "layers": setup.band, "coef": 0.6, "positions": "prompt"}]
    params = _params()
    plain = setup.llm.generate([prompt], [None], params)[0]
    first = setup.llm.generate([prompt], [spec], params)[0]
    again = setup.llm.generate([prompt], [spec], params)[0]
    back = setup.llm.generate([prompt], [None], params)[0]
    expected = _hf_greedy(setup.hf, prompt, _named(setup, spec))
    assert list(first.outputs[0].token_ids) == expected != list(plain.outputs[0].token_ids)
    assert list(again.outputs[0].token_ids) == expected
    assert list(back.outputs[0].token_ids) == list(plain.outputs[0].token_ids)
    assert (again.num_cached_tokens or 0) > 0 and (back.num_cached_tokens or 0) > 0


def test_bad_specs_fail_before_any_request_is_sent(tiny_qwen2: Setup) -> None:
    from pvrs.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="unknown vector 'ghost'"):
        tiny_qwen2.llm.generate(tiny_qwen2.prompts, [None, "ghost@1:1"], _params())
    with pytest.raises(InvalidArgumentError, match="out of range"):
        tiny_qwen2.llm.generate(tiny_qwen2.prompts[:1], ["random@9:1"], _params())
    assert not tiny_qwen2.llm.llm.llm_engine.has_unfinished_requests()


def test_the_worker_refuses_to_register_twice(tiny_qwen2: Setup, tmp_path: Path) -> None:
    from pvrs.engines.vllm_steering import save_vectors

    path = save_vectors(tiny_qwen2.vectors, tmp_path)
    with pytest.raises(Exception, match="already registered"):
        tiny_qwen2.llm.llm.collective_rpc("pvrs_register", args=(str(path),))
