"""Hub packaging (Rust) and reading back: real clients (`datasets`, pyarrow) read what pvrs
wrote, the layout is deterministic and sized by bytes, the Rust writer agrees with a plain
pyarrow reference, and `HFPersonaVectorStore` round-trips the local store."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import _hub_reference as reference
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import test_hub_push
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pvrs import hub
from pvrs.errors import (
    ArtifactError,
    InputError,
    InvalidArgumentError,
    NonFiniteError,
    PackagingError,
)
from pvrs.hub.cards import match_data_files
from pvrs.store import (
    PersonaVectorStore,
    VectorNotFoundError,
    load_analysis_dataset,
    validate_persona_id,
)
from safetensors.torch import save_file
from test_hub_push import REPO, FakeHub

MODEL = "org/tiny-model"
CONFIG = "org__tiny-model__answer_mean"
L, H = 4, 6
fake_hub = test_hub_push.fake_hub  # the push tests' fake Hub, to read a repo from
PERSONAS = {
    "baseline_assistant": ("Assistant", ["q1", "q2"]),
    "pirate": ("Pirate ☠", ["q1", "q2", "q3"]),
    "chef 🍳": ("Chef 🍳", []),
    "書道家": ("書道家 (calligrapher)", ["質問-1", "q2"]),
    "Zed": ("", ["q1"]),
}


def vec(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((L, H)).astype(np.float32) * 10


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A store with two masks x two variants written by the real local store."""
    root = tmp_path / "activations"
    for mi, mask in enumerate(("answer_mean", "persona_last")):
        store = PersonaVectorStore(MODEL, root_dir=root, mask_strategy=mask)
        for vi, variant in enumerate(("templated", "biography")):
            for pi, (pid, (name, sids)) in enumerate(PERSONAS.items()):
                store.save(pid, variant, vec(100 * mi + 10 * vi + pi), name=name, sample_ids=sids)
    return root


def package(root: Path, out: Path, **kw: object) -> hub.PackageResult:
    return hub.package(MODEL, out, root_dir=root, progress=False, **kw)  # type: ignore[arg-type]


def test_datasets_load_dataset_reads_exact_float32(root: Path, tmp_path: Path) -> None:
    import datasets

    out = tmp_path / "pkg"
    package(root, out)
    local = PersonaVectorStore(MODEL, root_dir=root)
    for variant in ("templated", "biography"):
        ds = datasets.load_dataset(str(out), CONFIG, split=variant, cache_dir=str(tmp_path / "c"))
        assert isinstance(ds.features["vector"], datasets.Array2D)
        assert ds.features["vector"].shape == (L, H)
        assert ds.features["vector"].dtype == "float32"
        assert ds["persona_id"] == sorted(PERSONAS, key=str.encode)
        rows = ds.with_format("numpy")
        for i, pid in enumerate(ds["persona_id"]):
            got = rows[i]["vector"]
            assert got.dtype == np.float32 and got.shape == (L, H)
            np.testing.assert_array_equal(got, local.load(pid, variant))
            assert ds[i]["name"] == PERSONAS[pid][0]
            assert ds[i]["sample_ids"] == PERSONAS[pid][1]


def test_pyarrow_schema_compression_and_card(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    result = package(root, out)
    assert result.configs == [CONFIG, "org__tiny-model__persona_last"]
    path = out / CONFIG / "templated-00000-of-00001.parquet"
    pf = pq.ParquetFile(path)
    schema = pf.schema_arrow
    assert schema.field("persona_id").type == pa.string()
    assert schema.field("sample_ids").type == pa.list_(pa.string())
    assert schema.field("vector").type == pa.list_(pa.list_(pa.float32()))
    features = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
    assert features["vector"] == {"shape": [L, H], "dtype": "float32", "_type": "Array2D"}
    md = pf.metadata
    assert all(
        md.row_group(0).column(c).compression == "ZSTD" for c in range(md.num_columns)
    )

    card = (out / "README.md").read_text(encoding="utf-8")
    meta = yaml.safe_load(card.split("---\n")[1])
    by_name = {c["config_name"]: c for c in meta["configs"]}
    assert by_name[CONFIG]["data_files"] == [
        {"split": "biography", "path": [f"{CONFIG}/biography-00000-of-00001.parquet"]},
        {"split": "templated", "path": [f"{CONFIG}/templated-00000-of-00001.parquet"]},
    ]
    info = {i["config_name"]: i for i in meta["dataset_info"]}[CONFIG]
    vector = next(f for f in info["features"] if f["name"] == "vector")
    assert vector["dtype"] == {"array2_d": {"shape": [L, H], "dtype": "float32"}}
    assert {s["name"]: s["num_examples"] for s in info["splits"]} == {
        "biography": len(PERSONAS),
        "templated": len(PERSONAS),
    }
    # The Hub's own card parser accepts it.
    from huggingface_hub import DatasetCard

    assert {c["config_name"] for c in DatasetCard(card).data.configs} == set(by_name)


def test_packaging_is_deterministic(root: Path, tmp_path: Path) -> None:
    a = package(root, tmp_path / "a")
    package(root, tmp_path / "b")
    assert a.files
    for f in a.files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_row_groups_and_files_are_sized_by_bytes(root: Path, tmp_path: Path) -> None:
    import datasets

    row = L * H * 4
    out = tmp_path / "pkg"
    result = package(root, out, mask_strategies="answer_mean", row_group_bytes=2 * row, file_bytes=4 * row)
    templated = next(s for s in result.splits if s.split == "templated")
    assert templated.files == (
        f"{CONFIG}/templated-00000-of-00002.parquet",
        f"{CONFIG}/templated-00001-of-00002.parquet",
    )
    first, second = (pq.ParquetFile(out / f).metadata for f in templated.files)
    assert [first.row_group(i).num_rows for i in range(first.num_row_groups)] == [2, 2]
    assert second.num_rows == 1
    ds = datasets.load_dataset(str(out), CONFIG, split="templated", cache_dir=str(tmp_path / "c"))
    assert ds.num_rows == len(PERSONAS)
    assert ds["persona_id"] == sorted(PERSONAS, key=str.encode)


def test_round_trip_through_hf_store(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    package(root, out, row_group_bytes=L * H * 4 * 2)
    for mask in ("answer_mean", "persona_last"):
        local = PersonaVectorStore(MODEL, root_dir=root, mask_strategy=mask)
        remote = hub.HFPersonaVectorStore(out, MODEL, mask)
        assert remote.available_variants() == local.available_variants()
        assert remote.list_personas() == local.list_personas()
        assert remote.list_personas(["templated"], include_baseline=True) == local.list_personas(
            ["templated"], include_baseline=True
        )
        assert remote.persona_names() == local.persona_names()
        assert remote.list_layers() == local.list_layers() == list(range(L))
        for variant in ("templated", "biography"):
            ids = local.list_personas([variant], include_baseline=True)
            for pid in ids:
                np.testing.assert_array_equal(remote.load(pid, variant), local.load(pid, variant))
                assert remote.sample_ids(pid, variant) == PERSONAS[pid][1]
                assert remote.has(pid, variant) and remote.has(pid, variant, PERSONAS[pid][1])
                assert not remote.has(pid, variant, ["other"])
            assert not remote.has("nobody", variant)
            np.testing.assert_array_equal(remote.stack(ids[::-1], variant), local.stack(ids[::-1], variant))
            np.testing.assert_array_equal(
                remote.stack(ids, variant, layers=[3, 0]), local.stack(ids, variant, layers=[3, 0])
            )
            np.testing.assert_array_equal(  # -1 is the last layer in both stores
                remote.stack(ids, variant, layers=[-1]), local.stack(ids, variant, layers=[L - 1])
            )
            for store in (remote, local):
                with pytest.raises(InvalidArgumentError, match=f"layer {L} is out of range"):
                    store.stack(ids, variant, layers=[L])
        remote.release_cache()
        assert remote.list_personas() == local.list_personas()
    with pytest.raises(VectorNotFoundError, match="known personas"):
        hub.HFPersonaVectorStore(out, MODEL).load("nobody", "templated")
    missing = hub.HFPersonaVectorStore(out, MODEL, variants=("templated", "other"))
    assert missing.list_personas() == [] and missing.list_layers() == []
    assert missing.available_variants() == ["templated"]
    # A missing requested variant gives no names, as in the local store.
    assert missing.persona_names(list(PERSONAS)) == {}
    assert local.persona_names(list(PERSONAS), ["templated", "other"]) == {}


def test_analysis_dataset_reads_a_packaged_folder(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    package(root, out)
    local = load_analysis_dataset(PersonaVectorStore(MODEL, root_dir=root), include_baseline=True)
    remote = load_analysis_dataset(hub.HFPersonaVectorStore(out, MODEL), include_baseline=True)
    assert (remote.persona_ids, remote.names, remote.layers) == (local.persona_ids, local.names, local.layers)
    for variant in ("templated", "biography"):
        for layers in (None, [2, 0]):
            np.testing.assert_array_equal(remote.samples(variant, layers), local.samples(variant, layers))
    with pytest.raises(ArtifactError, match=f"no persona vectors in {out} \\(config org__other__answer_mean"):
        load_analysis_dataset(hub.HFPersonaVectorStore(out, "org/other"))


def test_discovery(root: Path, tmp_path: Path) -> None:
    package(root, tmp_path / "pkg")
    found = hub.list_hub_vector_models(tmp_path / "pkg")
    assert [(c.model_dir, c.mask_strategy) for c in found] == [
        ("org__tiny-model", "answer_mean"),
        ("org__tiny-model", "persona_last"),
    ]
    assert found[0].model_name == MODEL
    parsed = hub.parse_vector_config_name("a__b__c__answer_last")
    assert (parsed.model_dir, parsed.mask_strategy) == ("a__b__c", "answer_last")
    for bad in ("answer_mean", "model__unknown_mask", "__answer_mean"):
        with pytest.raises(InputError):
            hub.parse_vector_config_name(bad)
    with pytest.raises(InputError, match="neither a local dataset folder"):
        hub.HFPersonaVectorStore(tmp_path / "does-not-exist", MODEL)


def test_half_precision_tensors_are_converted(root: Path, tmp_path: Path) -> None:
    folder = root / "org__tiny-model" / "answer_mean" / "templated"
    t = torch.randn(L, H) * 3
    save_file({"activations": t.to(torch.bfloat16)}, str(folder / "pirate.safetensors"))
    save_file({"activations": t.to(torch.float16)}, str(folder / "Zed.safetensors"))
    package(root, tmp_path / "pkg")
    remote = hub.HFPersonaVectorStore(tmp_path / "pkg", MODEL)
    np.testing.assert_array_equal(remote.load("pirate", "templated"), t.bfloat16().float().numpy())
    np.testing.assert_array_equal(remote.load("Zed", "templated"), t.half().float().numpy())


def test_bad_inputs_raise_typed_errors_and_leave_no_package(root: Path, tmp_path: Path) -> None:
    folder = root / "org__tiny-model" / "answer_mean" / "biography"
    out = tmp_path / "pkg"
    nan = vec(0)
    nan[2, 1] = np.nan
    save_file({"activations": torch.from_numpy(nan)}, str(folder / "pirate.safetensors"))
    with pytest.raises(NonFiniteError, match=r"pirate\.safetensors: layer 2 dimension 1"):
        package(root, out)
    assert not out.exists()
    (folder / "pirate.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ArtifactError, match="not a valid safetensors file"):
        package(root, out)
    (folder / "pirate.safetensors").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        package(root, out)
    with pytest.raises(InvalidArgumentError, match="no activations for model folder"):
        hub.package("org/other", out, root_dir=root, progress=False)
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        package(root, out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"


def test_overwrite_replaces_an_earlier_package(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    package(root, out, file_bytes=L * H * 4)
    assert len(list((out / CONFIG).glob("templated-*"))) == len(PERSONAS)
    with pytest.raises(InputError, match="not empty"):
        package(root, out)
    package(root, out, overwrite=True)
    assert sorted(p.name for p in (out / CONFIG).iterdir()) == [
        "biography-00000-of-00001.parquet",
        "templated-00000-of-00001.parquet",
    ]


# ---- Rust writer == plain pyarrow reference -------------------------------------------


def _safe_id(text: str) -> bool:
    try:
        validate_persona_id(text)
    except Exception:
        return False
    return True


persona_ids = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12
).filter(_safe_id)
texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=10)
floats = st.floats(width=32, allow_nan=False, allow_infinity=False)


@st.composite
def split_contents(draw: st.DrawFn) -> tuple[int, int, dict[str, tuple[str, list[str], np.ndarray]]]:
    layers = draw(st.integers(1, 4))
    hidden = draw(st.integers(1, 5))
    ids = draw(st.lists(persona_ids, min_size=1, max_size=6, unique=True))
    rows = {}
    for pid in ids:
        values = draw(st.lists(floats, min_size=layers * hidden, max_size=layers * hidden))
        rows[pid] = (
            draw(texts),
            draw(st.lists(texts, max_size=4)),
            np.array(values, dtype=np.float32).reshape(layers, hidden),
        )
    return layers, hidden, rows


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=split_contents(), group_rows=st.integers(1, 4), groups_per_file=st.integers(1, 3))
def test_rust_writer_matches_pyarrow_reference(
    content: tuple[int, int, dict[str, tuple[str, list[str], np.ndarray]]],
    group_rows: int,
    groups_per_file: int,
) -> None:
    layers, hidden, rows = content
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        store = PersonaVectorStore(MODEL, root_dir=root)
        for pid, (name, sids, array) in rows.items():
            store.save(pid, "templated", array, name=name, sample_ids=sids)
        row_bytes = layers * hidden * 4
        result = hub.package(
            MODEL,
            Path(tmp) / "rust",
            root_dir=root,
            row_group_bytes=group_rows * row_bytes,
            file_bytes=group_rows * groups_per_file * row_bytes,
            progress=False,
        )
        (split,) = result.splits
        tables = [pq.read_table(result.out_dir / f) for f in split.files]
        got = pa.concat_tables(tables)
        ref_path = Path(tmp) / "ref.parquet"
        reference.write_split(store.variant_dir("templated"), ref_path, group_rows)
        want = pq.read_table(ref_path)
        assert got.schema.equals(want.schema)
        assert json.loads(got.schema.metadata[b"huggingface"]) == json.loads(
            want.schema.metadata[b"huggingface"]
        )
        assert got.column("persona_id").to_pylist() == want.column("persona_id").to_pylist()
        assert got.column("name").to_pylist() == want.column("name").to_pylist()
        assert got.column("sample_ids").to_pylist() == want.column("sample_ids").to_pylist()
        # Bitwise equality of the floats (-0.0 and subnormals included).
        got_bits = np.asarray(got.column("vector").combine_chunks().flatten().flatten()).view(np.uint32)
        want_bits = np.asarray(want.column("vector").combine_chunks().flatten().flatten()).view(np.uint32)
        np.testing.assert_array_equal(got_bits, want_bits)
        assert len(split.files) == -(-len(rows) // (group_rows * groups_per_file))
        assert all(
            pq.ParquetFile(result.out_dir / f).metadata.row_group(0).num_rows
            == min(group_rows, t.num_rows)
            for f, t in zip(split.files, tables, strict=True)
        )


def test_progress_reports_rows_and_its_exceptions_abort(root: Path, tmp_path: Path) -> None:
    from pvrs import _core

    calls: list[tuple[int, int]] = []
    _core.package_store(root, tmp_path / "a", None, ["answer_mean"], 2 * L * H * 4, 1 << 30, lambda a, t: calls.append((a, t)))
    assert calls == [(2, 10), (2, 10), (1, 10)] * 2

    class Stop(Exception):
        pass

    def stop(advance: int, total: int) -> None:
        raise Stop(f"{advance}/{total}")

    with pytest.raises(Stop, match="1/20"):
        _core.package_store(root, tmp_path / "b", None, None, L * H * 4, 1 << 30, stop)
    # The rich progress bar path produces the same package as the silent one.
    shown = hub.package(MODEL, tmp_path / "c", root_dir=root, progress=True)
    silent = package(root, tmp_path / "d")
    assert shown.files == silent.files


def write_with_datasets(folder: Path, split: str, ids: list[str], shards: int = 1) -> None:
    """`<CONFIG>/<split>-NNNNN-of-NNNNN.parquet` as `datasets` writes them (`push_to_hub`'s
    shards: Array2D extension type, snappy), the vector of `ids[i]` being `vec(i)`."""
    import datasets

    features = datasets.Features(
        {
            "persona_id": datasets.Value("string"),
            "name": datasets.Value("string"),
            "sample_ids": datasets.Sequence(datasets.Value("string")),
            "vector": datasets.Array2D(shape=(L, H), dtype="float32"),
        }
    )
    ds = datasets.Dataset.from_dict(
        {
            "persona_id": ids,
            "name": [p.title() for p in ids],
            "sample_ids": [[f"q{i}"] * i for i in range(len(ids))],
            "vector": [vec(i) for i in range(len(ids))],
        },
        features=features,
    )
    (folder / CONFIG).mkdir(parents=True, exist_ok=True)
    for i in range(shards):
        path = folder / CONFIG / f"{split}-{i:05d}-of-{shards:05d}.parquet"
        ds.shard(shards, i, contiguous=True).to_parquet(str(path))


def test_reads_a_dataset_written_by_datasets_itself(tmp_path: Path) -> None:
    """A folder as `datasets` writes it (no card): found by its file names and read like
    pvrs' own output."""
    ids = ["a", "baseline_assistant", "b"]
    write_with_datasets(tmp_path, "biography", ids)
    store = hub.HFPersonaVectorStore(tmp_path, MODEL, variants=("biography",))
    assert store.list_personas() == ["a", "b"]
    assert store.persona_names(["b"]) == {"b": "B"}
    assert store.list_layers() == list(range(L))
    np.testing.assert_array_equal(store.load("b", "biography"), vec(2))
    assert store.sample_ids("b", "biography") == ["q2", "q2"]
    assert [c.config_name for c in hub.list_hub_vector_models(tmp_path)] == [CONFIG]


# ---- dataset cards: pvrs', `push_to_hub`'s, the reference tool's, none ------------------

SPLIT_IDS = {"templated": ["a", "b", "baseline_assistant", "c", "d"], "biography": ["a", "b"]}


def write_card(folder: Path, paths: dict[str, object]) -> None:
    data_files = [{"split": split, "path": path} for split, path in paths.items()]
    meta = {"configs": [{"config_name": CONFIG, "data_files": data_files}]}
    (folder / "README.md").write_text(f"---\n{yaml.safe_dump(meta)}---\n\n# vectors\n")


def card_paths(folder: Path, style: str) -> dict[str, object]:
    """Each split's `data_files` path in a card style: pvrs lists every file, `push_to_hub`
    writes `<config>/<split>-*`, the reference tool rewrites it to `<config>/<split>-*.parquet`."""
    out: dict[str, object] = {}
    for split in SPLIT_IDS:
        if style == "pvrs":
            out[split] = sorted(f"{CONFIG}/{p.name}" for p in (folder / CONFIG).glob(f"{split}-*"))
        else:
            out[split] = f"{CONFIG}/{split}-*" + (".parquet" if style == "reference" else "")
    return out


@pytest.fixture
def written(tmp_path: Path) -> Path:
    """Two splits written by `datasets`, the templated one in three shards."""
    folder = tmp_path / "ds"
    for split, ids in SPLIT_IDS.items():
        write_with_datasets(folder, split, ids, shards=3 if split == "templated" else 1)
    return folder


@pytest.mark.parametrize("style", ["pvrs", "push_to_hub", "reference", "none"])
def test_every_card_style_reads_like_datasets(written: Path, tmp_path: Path, style: str) -> None:
    import datasets

    if style != "none":
        write_card(written, card_paths(written, style))
    store = hub.HFPersonaVectorStore(written, MODEL)
    assert store.available_variants() == ["templated", "biography"]
    assert store.list_personas() == ["a", "b"]
    for split, ids in SPLIT_IDS.items():
        assert store.list_personas([split], include_baseline=True) == sorted(ids)
        np.testing.assert_array_equal(store.stack(ids, split), np.stack([vec(i) for i in range(len(ids))]))
        if style != "none":  # `datasets` needs the card to know the config
            ds = datasets.load_dataset(str(written), CONFIG, split=split, cache_dir=str(tmp_path / "c"))
            assert sorted(ds["persona_id"]) == sorted(ids)
            rows = ds.with_format("numpy")
            for i, pid in enumerate(ds["persona_id"]):
                np.testing.assert_array_equal(rows[i]["vector"], store.load(pid, split))


def test_card_globs_resolve_against_the_hub_file_list(written: Path, fake_hub: FakeHub) -> None:
    write_card(written, card_paths(written, "push_to_hub"))
    for path in written.rglob("*"):
        if path.is_file():
            fake_hub.files[path.relative_to(written).as_posix()] = path.read_bytes()
    store = hub.HFPersonaVectorStore(REPO, MODEL)
    assert store.list_personas() == ["a", "b"]
    np.testing.assert_array_equal(store.stack(["d", "a"], "templated"), np.stack([vec(4), vec(0)]))


def test_card_patterns_resolve_as_datasets_globs(written: Path, tmp_path: Path) -> None:
    from datasets.data_files import resolve_pattern

    files = [".hidden/c/x.parquet", "c/.x.parquet", "c/x-1.parquet", "c/d/x-2.parquet", "c/y.parquet"]
    for f in files:
        (tmp_path / "g" / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "g" / f).write_bytes(b"")
    expected = {
        "c/x-*": ["c/x-1.parquet"],  # `*` stays in its folder
        "**/x-*": ["c/d/x-2.parquet", "c/x-1.parquet"],
        "c/**": ["c/d/x-2.parquet", "c/x-1.parquet", "c/y.parquet"],  # not the hidden file
        "c/.*": ["c/.x.parquet"],
        "c/[xy]*.parquet": ["c/x-1.parquet", "c/y.parquet"],
        "./c/x-1.parquet": ["c/x-1.parquet"],
    }
    for pattern, want in expected.items():
        assert match_data_files(pattern, files) == want, pattern
        found = resolve_pattern(pattern, str(tmp_path / "g"))
        assert sorted(Path(f).relative_to(tmp_path / "g").as_posix() for f in found) == want, pattern
    write_card(written, {"templated": f"{CONFIG}/templated-*", "biography": f"{CONFIG}/bio-*"})
    store = hub.HFPersonaVectorStore(written, MODEL)
    assert store.list_personas(["templated"]) == ["a", "b", "c", "d"]
    with pytest.raises(PackagingError, match=f"'{CONFIG}/bio-\\*' for config '{CONFIG}' split 'biography', and no file"):
        store.list_personas()


def test_packaging_waits_for_a_save_in_progress(root: Path, tmp_path: Path) -> None:
    # Another process holds one variant's store lock (as a save does) for a moment.
    import subprocess
    import sys
    import time

    lock = next(root.rglob("manifest.json")).parent / ".manifest.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from filelock import FileLock\n"
         "with FileLock(sys.argv[1]):\n    print('held', flush=True); time.sleep(1.5)", str(lock)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    start = time.monotonic()
    package(root, tmp_path / "pkg")
    waited = time.monotonic() - start
    holder.wait()
    assert waited > 0.8, f"packaging did not wait for the lock ({waited:.2f} s)"


def test_hostile_dataset_folders_are_one_packaging_error(root: Path, tmp_path: Path) -> None:
    """A dataset downloaded from others: a broken card, unsafe or repeated persona ids and
    malformed vector columns are each one PackagingError naming the file, not a traceback
    or a silently hidden row."""
    good = tmp_path / "good"
    package(root, good, mask_strategies="answer_mean")
    shard = next((good / CONFIG).glob("templated-*.parquet")).relative_to(good)
    table = pq.read_table(good / shard)
    n = table.num_rows
    nested = pa.list_(pa.list_(pa.float32()))

    def column(name: str, values: pa.Array) -> pa.Table:
        return table.set_column(table.schema.get_field_index(name), name, values)

    rows = table.column("vector").to_pylist()
    cards = {
        "---\nconfigs: [\n  - {a:\n---\n": "not valid YAML",
        "---\nconfigs: 5\n---\n": "configs are int, not a list",
        f"---\nconfigs:\n- config_name: {CONFIG}\n  data_files: [[1, 2]]\n---\n": "data_files entry",
    }
    tables = {
        "duplicate": (column("persona_id", pa.array(["pirate"] * n)), "appears twice"),
        "escape": (column("persona_id", pa.array(["../x", *map(str, range(n - 1))])), "path separator"),
        "null id": (column("persona_id", pa.array([None] * n, pa.string())), "must be a string"),
        "null vector": (column("vector", pa.array([None, *rows[1:]], nested)), "null vectors"),
        "flat": (column("vector", pa.array([[1.0] * H] * n, pa.list_(pa.float32()))), "lists of floats"),
        "text ids": (column("sample_ids", pa.array(["q1"] * n)), "sample_ids a list of texts"),
    }
    cases = [(("card", text), message) for text, message in cards.items()]
    cases += [(("table", t), message) for t, message in tables.values()]
    for i, ((kind, content), message) in enumerate(cases):
        folder = tmp_path / f"case{i}"
        shutil.copytree(good, folder)
        if kind == "card":
            (folder / "README.md").write_text(content)
        else:
            pq.write_table(content, folder / shard)
        store = hub.HFPersonaVectorStore(folder, MODEL)
        with pytest.raises(PackagingError, match=message) as caught:
            store.stack(store.list_personas(["templated"]), "templated")
        assert str(folder) in str(caught.value)
    meta = dict(table.schema.metadata)
    info = json.loads(meta[b"huggingface"])
    info["info"]["features"]["vector"]["shape"] = [100, H]  # a declared shape that lies
    meta[b"huggingface"] = json.dumps(info).encode()
    pq.write_table(table.replace_schema_metadata(meta), tmp_path / "case0" / shard)
    (tmp_path / "case0" / "README.md").write_bytes((good / "README.md").read_bytes())
    with pytest.raises(PackagingError, match=rf"vectors are \({L}, {H}\), but this split's are \(100, {H}\)"):
        hub.HFPersonaVectorStore(tmp_path / "case0", MODEL).stack(["pirate"], "templated", layers=[50])
    mixed = tmp_path / "mixed"  # one file per persona, one of them of another shape
    package(root, mixed, mask_strategies="answer_mean", file_bytes=L * H * 4)
    files = sorted((mixed / CONFIG).glob("templated-*.parquet"))
    other = pq.read_table(files[-1]).replace_schema_metadata(None)
    other = other.set_column(other.schema.get_field_index("vector"), "vector", pa.array([[[1.0] * H] * (L + 1)], nested))
    for f in files:
        pq.write_table(other if f == files[-1] else pq.read_table(f).replace_schema_metadata(None), f)
    store = hub.HFPersonaVectorStore(mixed, MODEL)
    with pytest.raises(PackagingError, match="but this split's are"):
        store.stack(store.list_personas(["templated"]), "templated")
    (tmp_path / "case0" / "README.md").write_bytes(b"\xff\xfe binary")
    with pytest.raises(PackagingError, match="not UTF-8"):
        hub.HFPersonaVectorStore(tmp_path / "case0", MODEL).list_personas(["templated"])
