"""The one layer grammar shared by `analyze --layers` and the steering commands' `--layer`."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pvrs.errors import InputError
from pvrs.store.layerspec import parse_layers


def test_numbers_ranges_commas_and_negatives():
    layers = range(10)
    assert parse_layers(["3", "5-7", "-1"], layers) == [3, 5, 6, 7, 9]
    assert parse_layers(["2,4", "4:5"], layers) == [2, 4, 5]
    assert parse_layers(["3", "5-7", "6", "9,10"]) == [3, 5, 6, 7, 9, 10]  # no bound given
    assert parse_layers(["-3--1"], layers) == [7, 8, 9]
    assert parse_layers(["-1"], [0, 2, 4]) == [4]  # negatives index the layers that exist
    assert parse_layers(["10 12", " 3, 4 "], range(20)) == [10, 12, 3, 4]  # one quoted argument


@pytest.mark.parametrize(
    ("spec", "available", "message"),
    [
        (["12"], range(10), r"--layers '12': layer 12 does not exist \(0..9\)"),
        (["x"], range(10), "ranges like 4-12"),
        (["3-"], range(10), "ranges like 4-12"),
        (["-11"], range(10), "only 10 layers exist"),
        (["-1"], None, "negative layers need the layer count"),
        (["5-3"], range(10), "the range goes backwards"),
        (["9-7", "4"], range(10), "the range goes backwards"),
        ([""], range(10), "ranges like 4-12"),
        (["1"], [0, 2], "layer 1 does not exist"),
    ],
)
def test_errors_name_the_item(spec, available, message):
    with pytest.raises(InputError, match=message):
        parse_layers(spec, available)


@given(st.lists(st.integers(0, 63), min_size=1, max_size=20), st.booleans())
def test_plain_numbers_round_trip_in_order(layers, commas):
    spec = [",".join(map(str, layers))] if commas else [str(x) for x in layers]
    assert parse_layers(spec, range(64)) == list(dict.fromkeys(layers))
