"""The per-request steering spec of the vLLM worker (`pvrs.engines.vllm_steering`): what it
reads, the one-line errors it gives before anything reaches vLLM, and the eager-only rule.
No vLLM needed."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from pvrs.engines.schedule import Schedule
from pvrs.engines.vllm_steering import Edit, SteeringSpec, VectorCatalog, parse_spec
from pvrs.engines.vllm_worker import check_eager
from pvrs.errors import InvalidArgumentError

L, H = 4, 8


@pytest.fixture
def catalog() -> VectorCatalog:
    axis = torch.randn(L, H)
    axis[2] = 0.0
    return VectorCatalog.of({"pirate": torch.randn(L, H), "axis": axis}, L, H)


def test_shorthand_is_one_add_at_every_position(catalog):
    spec = parse_spec("pirate@1:4.5", catalog)
    assert spec == SteeringSpec((Edit("add", "pirate", (1,), (4.5,)),))
    band = parse_spec("pirate@1-3:-2", catalog)
    assert band is not None and band.edits[0].layers == (1, 2, 3) and band.edits[0].coef == (-2.0,) * 3


def test_json_forms_agree_and_round_trip(catalog):
    edit = {"kind": "cap", "vector": "axis", "layers": [0, 1], "tau": [1.0, 2.0], "positions": "response"}
    spec = parse_spec([edit], catalog)
    assert spec == parse_spec(edit, catalog) == parse_spec({"edits": [edit]}, catalog)
    assert spec == parse_spec(json.dumps([edit]), catalog) == parse_spec(spec.dumps(), catalog)
    assert spec.edits[0] == Edit("cap", "axis", (0, 1), (1.0, 2.0), "response")
    scheduled = parse_spec({"vector": "pirate", "layers": "0-1", "alpha": 3, "schedule": "linear:8"}, catalog)
    assert scheduled.edits[0].schedule == Schedule("linear", 8)
    assert parse_spec(scheduled.dumps(), catalog) == scheduled


def test_no_steering_is_none(catalog):
    for raw in (None, "", "  ", []):
        assert parse_spec(raw, catalog) is None


def test_ablate_needs_no_coef_and_several_edits_keep_their_order(catalog):
    spec = parse_spec([{"kind": "ablate", "vector": "axis", "layers": 1}, "pirate@1:2"], catalog)
    assert [e.kind for e in spec.edits] == ["ablate", "add"]


def test_salt_differs_between_specs_and_agrees_for_equal_ones(catalog):
    a = parse_spec("pirate@1:4", catalog)
    assert a.cache_salt == parse_spec({"vector": "pirate", "layers": [1], "coef": 4.0}, catalog).cache_salt
    assert a.cache_salt != parse_spec("pirate@1:4.01", catalog).cache_salt
    assert a.cache_salt != parse_spec({"vector": "pirate", "layers": 1, "coef": 4, "positions": "prompt"}, catalog).cache_salt


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("ghost@1:4", "unknown vector 'ghost'; registered: axis, pirate"),
        ("pirate@4:4", r"layer\(s\) \[4\] out of range; this model has layers 0-3"),
        ("pirate@3-1:4", "run backwards"),
        ("pirate@1:abc", "alpha 'abc'"),
        ("pirate:4", "is not NAME@LAYER:ALPHA"),
        ({"vector": "pirate", "layers": 1, "coef": math.nan}, "coef is nan; it must be a finite number"),
        ({"vector": "pirate", "layers": 1, "coef": math.inf}, "finite"),
        ({"vector": "pirate", "layers": [0, 1], "coef": [1, 2, 3]}, "3 values for 2 layers"),
        ({"kind": "steer", "vector": "pirate", "layers": 1, "coef": 1}, "kind 'steer' is not one of add, ablate"),
        ({"vector": "pirate", "layers": 1, "coef": 1, "positions": "last"}, "positions 'last' is not one of"),
        ({"vector": "pirate", "layers": 1, "coef": 1, "schedule": "linear:0"}, "schedule 'linear:0'"),
        ({"kind": "cap", "vector": "axis", "layers": 1, "tau": 1, "schedule": "first:2"}, "add only"),
        ({"kind": "cap", "vector": "axis", "layers": 1}, "needs \"coef\" \\(tau\\)"),
        ({"kind": "ablate", "vector": "axis", "layers": [1, 2]}, r"zero at layer\(s\) \[2\]"),
        ({"vector": "pirate", "layers": 1, "coef": 1, "alpha": 2}, "not several"),
        ({"vector": "pirate", "layers": 1, "coef": 1, "strength": 2}, r"unknown key\(s\) \['strength'\]"),
        ({"vector": "pirate", "layers": [1, 1], "coef": 1}, "twice"),
        ({"vector": "pirate", "layers": True, "coef": 1}, "layers True"),
        ({"vector": "pirate", "coef": 1}, "needs \"layers\""),
        ({"layers": 1, "coef": 1}, "needs \"vector\""),
        ("[{", "not valid JSON"),
        (42, "expected a list of edits"),
        ([42], "an edit must be an object"),
    ],
)
def test_bad_specs_are_one_line_errors(catalog, raw, message):
    with pytest.raises(InvalidArgumentError, match=message) as info:
        parse_spec(raw, catalog)
    assert "\n" not in str(info.value) and str(info.value).startswith("steering spec: ")


def test_without_a_catalog_only_the_form_is_checked():
    assert parse_spec("anything@99:1") is not None
    with pytest.raises(InvalidArgumentError, match="finite"):
        parse_spec({"vector": "x", "layers": 1, "coef": math.nan})


@pytest.mark.parametrize(
    ("vectors", "message"),
    [
        ({"v": torch.zeros(L, H + 1)}, r"shape \(4, 9\); this model needs \(4, 8\)"),
        ({"v": torch.zeros(H)}, r"shape \(8,\)"),
        ({"v": torch.full((L, H), math.nan)}, "NaN or infinite"),
        ({"a@b": torch.zeros(L, H)}, "without '@'"),
    ],
)
def test_bad_vectors_are_refused_when_registered(vectors, message):
    with pytest.raises(InvalidArgumentError, match=message):
        VectorCatalog.of(vectors, L, H)


def _config(eager: bool, mode: int) -> SimpleNamespace:
    return SimpleNamespace(model_config=SimpleNamespace(enforce_eager=eager),
                           compilation_config=SimpleNamespace(mode=mode))


def test_the_worker_refuses_a_compiled_engine():
    check_eager(_config(True, 0))
    for eager, mode in ((False, 0), (True, 3), (False, 3)):
        with pytest.raises(RuntimeError, match="enforce_eager=True"):
            check_eager(_config(eager, mode))


def test_the_offline_api_refuses_compilation_before_starting_vllm():
    from pvrs.engines.vllm_steering import SteerableLLM

    with pytest.raises(InvalidArgumentError, match="needs enforce_eager=True"):
        SteerableLLM("m", {}, enforce_eager=False)
    with pytest.raises(InvalidArgumentError, match="compilation_config"):
        SteerableLLM("m", {}, compilation_config={"mode": 3})
