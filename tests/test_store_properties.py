"""Property tests: the Rust safetensors header parser, aggregation and persona-id rules agree
with plain Python references and with the `safetensors` package."""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pvrs import _core
from pvrs.errors import ArtifactError, PersonaIdError
from pvrs.store import manifest_text, validate_persona_id
from safetensors import safe_open
from safetensors.torch import save as st_save
from safetensors.torch import save_file

SETTINGS = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
TORCH_DTYPES = {
    "F32": torch.float32,
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
SIZES = {
    "F32": 4,
    "BF16": 2,
    "F16": 2,
    "F64": 8,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
# Names and metadata exercise unicode: CJK, emoji, combining marks, quotes, escapes.
TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",)), min_size=1, max_size=12)


# ---- plain Python references -----------------------------------------------------------


def reference_header(data: bytes) -> dict | None:
    """The safetensors header rules in plain Python; None when the file is invalid."""
    if len(data) < 8:
        return None
    (n,) = struct.unpack("<Q", data[:8])
    if n > 100_000_000 or n > len(data) - 8:
        return None
    try:
        text = data[8 : 8 + n].decode("utf-8")
        if not text.startswith("{"):
            return None
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(header, dict):
        return None
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        return None
    data_len = len(data) - 8 - n
    spans = []
    tensors = {}
    for name, info in header.items():
        if not isinstance(info, dict):
            return None
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if (
            dtype not in SIZES
            or not isinstance(shape, list)
            or not isinstance(offsets, list)
            or len(offsets) != 2
        ):
            return None
        ints = [*shape, *offsets]
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**64 for v in ints):
            return None
        begin, end = offsets
        if (
            begin > end
            or end > data_len
            or SIZES[dtype] * int(np.prod(shape, dtype=object)) != end - begin
        ):
            return None
        spans.append((begin, end))
        tensors[name] = {"dtype": dtype, "shape": shape, "data_offsets": (begin, end)}
    cursor = 0
    for begin, end in sorted(spans):
        if begin != cursor:
            return None
        cursor = end
    if cursor != data_len:
        return None
    return {"header_len": n, "metadata": metadata, "tensors": tensors}


def reference_stack(paths: list[Path], layers: list[int] | None) -> np.ndarray:
    """Plain loop: safetensors + torch, float32."""
    from safetensors.torch import load_file

    arrays = [load_file(str(p))["activations"].to(torch.float32).numpy() for p in paths]
    stacked = np.stack(arrays)
    return stacked if layers is None else stacked[:, layers]


def rust_header(data: bytes, tmp: Path) -> dict | None:
    path = tmp / "x.safetensors"
    path.write_bytes(data)
    try:
        return _core.read_safetensors_header(path)
    except ArtifactError as exc:
        assert "x.safetensors" in str(exc)  # errors name the file
        return None


def package_header(data: bytes, tmp: Path) -> dict | None:
    path = tmp / "p.safetensors"
    path.write_bytes(data)
    try:
        torch_view = __import__("safetensors.torch", fromlist=["load"]).load(data)
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            names = set(handle.keys())
    except Exception:
        return None
    return {
        "names": names,
        "metadata": metadata,
        "shapes": {k: list(v.shape) for k, v in torch_view.items()},
    }


# ---- strategies ------------------------------------------------------------------------

tensor_specs = st.dictionaries(
    TEXT.filter(lambda s: s != "__metadata__"),
    st.tuples(st.sampled_from(sorted(TORCH_DTYPES)), st.lists(st.integers(0, 4), max_size=3)),
    max_size=4,
)
metadata_specs = st.none() | st.dictionaries(TEXT, st.text(max_size=20), max_size=3)


def build(specs: dict, metadata: dict | None) -> bytes:
    # safetensors 0.7 serialises no tensors plus metadata as invalid JSON (`{},"__metadata__":{}}`).
    assume(specs or metadata is None)
    tensors = {
        name: (torch.arange(int(np.prod(shape)) or 0) % 3).to(TORCH_DTYPES[dtype]).reshape(shape)
        for name, (dtype, shape) in specs.items()
    }
    return st_save(tensors, metadata=metadata)


@SETTINGS
@given(specs=tensor_specs, metadata=metadata_specs)
def test_header_agrees_with_safetensors_on_valid_files(specs: dict, metadata: dict | None) -> None:
    data = build(specs, metadata)
    with tempfile.TemporaryDirectory() as tmp:
        rust = rust_header(data, Path(tmp))
        package = package_header(data, Path(tmp))
    assert rust is not None and package is not None
    assert set(rust["tensors"]) == package["names"] == set(specs)
    assert rust["metadata"] == package["metadata"] == (metadata or {})
    for name, info in rust["tensors"].items():
        assert info["dtype"] == specs[name][0]
        assert info["shape"] == package["shapes"][name] == specs[name][1]
    assert rust == reference_header(data)


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("length"), st.integers(0, 2**64 - 1), st.just(0)),
)


def mutate(data: bytes, kind: str, where: int, value: int) -> bytes:
    buf = bytearray(data)
    if kind == "length":
        buf[:8] = struct.pack("<Q", where)
    elif kind == "flip" and buf:
        buf[where % len(buf)] ^= value
    elif kind == "truncate":
        del buf[where % (len(buf) + 1) :]
    elif kind == "insert":
        buf.insert(where % (len(buf) + 1), value)
    return bytes(buf)


@SETTINGS
@given(
    specs=tensor_specs,
    metadata=metadata_specs,
    mutations=st.lists(mutation, min_size=1, max_size=3),
)
def test_mutated_bytes_never_crash_and_agree(
    specs: dict, metadata: dict | None, mutations: list
) -> None:
    data = build(specs, metadata)
    for kind, where, value in mutations:
        data = mutate(data, kind, where, value)
    with tempfile.TemporaryDirectory() as tmp:
        rust = rust_header(data, Path(tmp))  # only ArtifactError may be raised
        package = package_header(data, Path(tmp))
    assert rust == reference_header(data)
    assert (rust is None) == (package is None)
    if rust is not None and package is not None:
        assert set(rust["tensors"]) == package["names"]


@SETTINGS
@given(
    n_files=st.integers(1, 6),
    rows=st.integers(1, 5),
    cols=st.integers(1, 7),
    dtype=st.sampled_from(["F32", "BF16", "F16"]),
    seed=st.integers(0, 2**32 - 1),
    layer_pick=st.none() | st.lists(st.integers(0, 4), min_size=1, max_size=6),
)
def test_aggregation_matches_numpy(
    tmp_path: Path,
    n_files: int,
    rows: int,
    cols: int,
    dtype: str,
    seed: int,
    layer_pick: list[int] | None,
) -> None:
    rng = np.random.default_rng(seed)
    layers = None if layer_pick is None else [i % rows for i in layer_pick]
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    paths = []
    for i in range(n_files):
        values = torch.from_numpy(rng.uniform(-100, 100, (rows, cols)).astype(np.float32)).to(
            TORCH_DTYPES[dtype]
        )
        save_file({"activations": values}, str(folder / f"{i}.safetensors"))
        paths.append(folder / f"{i}.safetensors")
    expected = reference_stack(paths, layers)
    stacked = _core.stack_files(paths, layers)
    assert stacked.dtype == np.float32
    np.testing.assert_array_equal(stacked, expected)
    wide = expected.astype(np.float64)
    np.testing.assert_allclose(
        _core.aggregate_files(paths, "sum", layers), wide.sum(0), rtol=1e-6, atol=1e-4
    )
    np.testing.assert_allclose(
        _core.aggregate_files(paths, "mean", layers), wide.mean(0), rtol=1e-6, atol=1e-5
    )
    np.testing.assert_allclose(
        _core.aggregate_files(paths, "var", layers), wide.var(0), rtol=1e-5, atol=1e-3
    )
    if n_files > 1:
        np.testing.assert_allclose(
            _core.aggregate_files(paths, "var", layers, ddof=1),
            wide.var(0, ddof=1),
            rtol=1e-5,
            atol=1e-3,
        )


def test_aggregation_is_exact_in_float64_where_float32_drifts(tmp_path: Path) -> None:
    """1,000 files of 1e4 + small offsets: float32 running sums lose the offsets."""
    paths = []
    for i in range(1000):
        save_file(
            {"activations": torch.full((1, 2), 1e4 + (i % 10) * 1e-3)},
            str(tmp_path / f"{i}.safetensors"),
        )
        paths.append(tmp_path / f"{i}.safetensors")
    values = np.array([np.float32(1e4 + (i % 10) * 1e-3) for i in range(1000)])
    exact = np.float32(values.astype(np.float64).mean())
    naive = np.float32(0)
    for v in values:  # what a float32 running sum gives
        naive = np.float32(naive + v)
    assert naive / np.float32(1000) != exact
    np.testing.assert_array_equal(_core.aggregate_files(paths, "mean"), np.full((1, 2), exact))


@settings(max_examples=400, deadline=None)
@given(
    TEXT
    | st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=210)
    | st.text(alphabet=st.characters(categories=("Zs", "Zl", "Zp", "Cf", "Cc", "Ll")) | st.sampled_from(".\u200d"), max_size=6)
)
def test_persona_id_rules_agree(persona_id: str) -> None:
    try:
        validate_persona_id(persona_id)
        python_ok = True
    except PersonaIdError:
        python_ok = False
    assert python_ok == (_core.persona_id_problem(persona_id) is None)


@pytest.mark.parametrize(
    "bad", ["..", "a/b", "\x00", "x" * 201, "", "\u0085", ".", " ", " pirate", "pirate\u3000", "a\u202eb", "\u200b", "\ufeffa"]
)
def test_persona_id_edge_cases_agree(bad: str) -> None:
    assert _core.persona_id_problem(bad) is not None
    with pytest.raises(PersonaIdError):
        validate_persona_id(bad)


_json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=12)
_entries = st.dictionaries(
    st.text(max_size=8),
    _json_scalars | st.lists(st.text(max_size=6), max_size=4),
    max_size=4,
)


@given(
    st.dictionaries(st.text(max_size=10), _json_scalars, max_size=4),
    st.dictionaries(st.text(max_size=10), _entries, max_size=5),
)
def test_manifest_text_is_the_same_json(header: dict, personas: dict) -> None:
    # One line per persona, unicode kept as is, and json reads back exactly what was given.
    manifest = {**header, "personas": personas}
    text = manifest_text(manifest)
    assert json.loads(text) == manifest
    assert text.endswith("}\n") and text.count("\n") >= len(personas) + 2


_names = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=12)
_steps = st.lists(
    st.tuples(
        st.lists(st.text("abcxyz_-0é中", min_size=1, max_size=4), max_size=6),  # ids to (re)write
        st.lists(st.text("abcxyz_-0é中", min_size=1, max_size=4), max_size=3),  # ids to drop
        _names,
    ),
    min_size=1,
    max_size=6,
)


@given(_steps)
def test_manifest_text_with_cached_rows_equals_a_full_encoding(steps: list) -> None:
    # Batch saves encode only changed rows: at every step the text built from the cache is
    # byte for byte the text of the whole manifest, whatever was added, replaced or dropped.
    manifest: dict = {"num_layers": 2, "hidden_size": 3, "personas": {}, "model": "m"}
    rows: dict = {}
    for written, dropped, name in steps:
        for pid in dropped:
            manifest["personas"].pop(pid, None)
        for k, pid in enumerate(written):
            manifest["personas"].pop(pid, None)
            manifest["personas"][pid] = {"name": f"{name}{k}", "sample_ids": [name], "sha256": None}
        manifest["model"] = name
        assert manifest_text(manifest, rows) == manifest_text(manifest)
        assert set(rows) == set(manifest["personas"])
