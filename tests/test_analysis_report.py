"""`pvrs analyze` end to end on a small synthetic store: every output is written and
readable (PNGs opened, tables parsed), and bad stores fail with one clear line."""

from __future__ import annotations

import csv
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import test_hub_push
from pvrs.analysis.export import png_browser
from pvrs.analysis.probes import load_probe_artifact
from pvrs.cli import main
from pvrs.errors import InputError, NonFiniteError
from pvrs.store import PersonaVectorStore, VectorRecord
from test_hub_push import REPO

MODEL = "tiny/test-model"
L, H = 4, 16
ROLES = ["pirate", "poet", "chef", "judge", "nurse", "spy", "monk", "clown"]
fake_hub = test_hub_push.fake_hub  # the push tests' fake Hub, to read a repo from


needs_browser = pytest.mark.skipif(
    png_browser() is None, reason="PNG export needs Chrome/Chromium (apt-get install chromium)"
)


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's signature and IHDR chunk (no PIL needed)."""
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _fill(root: Path, strategy: str = "answer_mean", *, baseline: bool = True) -> None:
    rng = np.random.default_rng(0)
    store = PersonaVectorStore(MODEL, root_dir=root, mask_strategy=strategy)
    ids = [*ROLES, "baseline_assistant"] if baseline else ROLES
    for variant, noise in (("templated", 0.1), ("biography", 0.3)):
        records = []
        for i, pid in enumerate(ids):
            vec = 10.0 + noise * rng.standard_normal((L, H))
            vec[:, 0] += 5.0 if pid == "baseline_assistant" else 0.0
            vec[:, 1 + i % 2] += 2.0  # 'kind' planted in dims 1/2
            records.append(VectorRecord(pid, vec.astype(np.float32), pid.title(), [f"q{i}"]))
        store.save_many(variant, records)


@pytest.fixture()
def store_root(tmp_path: Path) -> Path:
    root = tmp_path / "activations"
    _fill(root)
    _fill(root, "answer_last")
    return root


@pytest.fixture()
def persona_file(tmp_path: Path) -> Path:
    path = tmp_path / "personas.jsonl"
    rows = [
        {
            "id": pid,
            "name": pid.title(),
            "templated": "t",
            "biography": "b",
            "kind": ["a", "b"][i % 2],
        }
        for i, pid in enumerate(ROLES)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@needs_browser
def test_analyze_writes_everything(store_root, persona_file, tmp_path, capsys):
    out = tmp_path / "report"
    rc = main(
        [
            "analyze", "--model", MODEL, "--source", str(store_root), "--out", str(out),
            "--mask-strategy", "answer_mean", "answer_last", "--persona-file", str(persona_file),
            "--folds", "2",
        ]
    )  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert str(out / "report.html") in printed
    html = (out / "report.html").read_text()
    assert "Plotly.newPlot" in html and "plotly.js" in html.lower()  # JS inlined: offline
    assert not re.findall(r"<script[^>]*\bsrc=", html)  # nothing fetched when opened
    pngs = sorted((out / "png").glob("*.png"))
    slugs = {p.stem for p in pngs}
    assert {"layer_curves", "similarity", "pca_scree", "pca_2d", "pca_3d", "axis_projection",
            "axis_layers", "variant_agreement", "strategy_agreement", "probes", "isomap",
            "kmeans", "dendrogram"} <= slugs  # fmt: skip
    for p in pngs:
        w, h = _png_size(p)
        assert w >= 400 and h >= 300
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_personas"] == 9 and summary["layers"] == [0, 1, 2, 3]
    assert summary["vectors"] == "answer_mean/templated"
    assert summary["assistant_axis"]["default_ids"] == ["baseline_assistant"]
    assert summary["assistant_axis"]["cos_pc1_at_focus"] > 0.9  # the planted offset is PC1
    assert {(a["a"], a["b"]) for a in summary["agreement"]} == {
        ("answer_mean/templated", "answer_mean/biography"),
        ("answer_last/templated", "answer_last/biography"),
        ("answer_mean/templated", "answer_last/templated"),
    }
    with (out / "tables" / "similarity_centered.csv").open() as f:
        rows = list(csv.reader(f))
    assert len(rows) == 10 and len(rows[0]) == 10
    for name in ("distances.csv", "neighbours.csv", "pca_explained_variance.csv",
                 "pca_projections.csv", "layer_curves.csv", "variant_agreement.csv",
                 "strategy_agreement.csv", "assistant_axis_projections.csv", "probe_scores.csv"):  # fmt: skip
        assert (out / "tables" / name).stat().st_size > 0, name
    sim = np.load(out / "tables" / "similarity_all_layers.npz")
    assert sim["centered"].shape == (4, 9, 9)
    from safetensors.numpy import load_file

    axis = load_file(str(out / "assistant_axis.safetensors"))["axis"]
    np.testing.assert_allclose(np.linalg.norm(axis, axis=1), 1.0, rtol=1e-5)
    probes = {p["method"]: p for p in summary["probes"]}
    assert set(probes) == {"logistic", "ridge", "diffmeans"}
    art = load_probe_artifact(probes["diffmeans"]["artifact"])
    assert art.attribute == "kind" and art.classes == ["a", "b"]
    assert probes["diffmeans"]["score"] == 1.0


def test_analyze_html_only_with_layer_subset(store_root, tmp_path, capsys):
    out = tmp_path / "r"
    rc = main(["analyze", "--model", MODEL, "--source", str(store_root), "--out", str(out),
               "--variant", "biography", "--layers", "1-2", "--no-png", "--focus-layer", "2"])  # fmt: skip
    assert rc == 0
    assert not (out / "png").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["layers"] == [1, 2] and summary["focus_layer"] == 2
    assert summary["variant"] == "biography" and summary["agreement"] == []


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_analyze_empty_store_errors_cleanly(tmp_path, capsys):
    rc = main(
        ["analyze", "--model", MODEL, "--source", str(tmp_path), "--out", str(tmp_path / "o")]
    )
    assert rc == 2
    line = _error_line(capsys)
    assert "no persona vectors for model 'tiny/test-model'" in line and "pvrs extract" in line


def test_analyze_names_models_that_exist(store_root, tmp_path, capsys):
    rc = main(["analyze", "--model", "other/model", "--source", str(store_root), "--no-png",
               "--out", str(tmp_path / "o")])  # fmt: skip
    assert rc == 2
    assert "models with vectors there: tiny/test-model" in _error_line(capsys)


def test_analyze_checks_out_before_the_work_and_names_a_failed_write(store_root, tmp_path, capsys, monkeypatch):
    import errno

    from pvrs.analysis import report

    a_file = tmp_path / "file"
    a_file.write_text("")
    base = ["analyze", "--model", MODEL, "--source", str(store_root), "--no-png"]
    assert main([*base, "--out", str(a_file)]) == 2
    assert _error_line(capsys) == f"pvrs analyze: error: --out '{a_file}' is a file; pass a folder"

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report, "run_analysis", disk_full)
    out = tmp_path / "o"
    assert main([*base, "--out", str(out)]) == 1
    assert _error_line(capsys) == f"pvrs analyze: error: cannot write {out}: No space left on device"


def test_analyze_single_persona_errors_cleanly(tmp_path, capsys):
    store = PersonaVectorStore(MODEL, root_dir=tmp_path, mask_strategy="answer_mean")
    store.save("pirate", "templated", np.ones((L, H), np.float32), name="Pirate", sample_ids=["q"])
    rc = main(["analyze", "--model", MODEL, "--source", str(tmp_path), "--no-png",
               "--out", str(tmp_path / "o")])  # fmt: skip
    assert rc == 2
    assert "needs at least 2 personas, found 1" in _error_line(capsys)


def test_run_analysis_rejects_nan_and_disjoint_variants(tmp_path):
    from pvrs.analysis.report import VectorSet, run_analysis

    x = np.ones((3, 2, 4), np.float32)
    x[2, 0, 0] = np.nan
    bad = VectorSet("answer_mean", "templated", ["a", "b", "c"], ["A", "B", "C"], [0, 1], x)
    with pytest.raises(NonFiniteError, match="'c' holds NaN"):
        run_analysis([bad], tmp_path / "o")
    rng = np.random.default_rng(0)
    a = VectorSet(
        "answer_mean", "templated", ["a", "b"], ["A", "B"], [0, 1], rng.standard_normal((2, 2, 4))
    )
    b = VectorSet(
        "answer_mean", "biography", ["c", "d"], ["C", "D"], [0, 1], rng.standard_normal((2, 2, 4))
    )
    with pytest.raises(InputError, match="share no persona"):
        run_analysis(
            [a, b],
            tmp_path / "o",
        )


def test_analyze_reads_packaged_folders_and_hub_repos(store_root, tmp_path, fake_hub, capsys):
    # `pvrs push --dry-run` writes the files `pvrs push` uploads: analysing that folder, or
    # the same files in a Hub repo, gives the report of the store they were packaged from.
    packaged = tmp_path / "packaged"
    push = ["push", "--model", MODEL, "--source", str(store_root), "--dry-run", "--out", str(packaged)]
    assert main(push) == 0, capsys.readouterr().err
    for path in packaged.rglob("*"):
        if path.is_file():
            fake_hub.files[path.relative_to(packaged).as_posix()] = path.read_bytes()
    summaries = []
    for i, source in enumerate((store_root, packaged, REPO)):
        out = tmp_path / f"o{i}"
        rc = main(["analyze", "--model", MODEL, "--source", str(source), "--no-png",
                   "--mask-strategy", "answer_mean", "answer_last", "--out", str(out)])  # fmt: skip
        assert rc == 0, capsys.readouterr().err
        summaries.append(json.loads((out / "summary.json").read_text()))
    assert summaries[1] == summaries[0] and summaries[2] == summaries[0]


def test_axis_needs_its_default_personas(tmp_path, capsys):
    root = tmp_path / "store"
    _fill(root, baseline=False)
    out = tmp_path / "o"
    rc = main(["analyze", "--model", MODEL, "--source", str(root), "--no-png", "--out", str(out)])
    assert rc == 0  # no baseline extracted: the axis is skipped, with a note
    assert "assistant axis skipped" in capsys.readouterr().err
    assert "assistant_axis" not in json.loads((out / "summary.json").read_text())
    rc = main(["analyze", "--model", MODEL, "--source", str(root), "--no-png", "--out", str(out),
               "--default-persona", "helper"])  # fmt: skip
    assert rc == 2  # named explicitly: it must exist
    assert "none of the default personas ['helper']" in _error_line(capsys)
    rc = main(["analyze", "--model", MODEL, "--source", str(root), "--no-png", "--out", str(out),
               "--default-persona", "pirate", "poet", "--focus-layer", "9"])  # fmt: skip
    assert rc == 2
    assert "layer 9 is not among the analysed layers" in _error_line(capsys)


def test_requested_variant_must_exist(tmp_path, capsys):
    store = PersonaVectorStore(MODEL, root_dir=tmp_path, mask_strategy="answer_mean")
    for pid in ("a", "b"):
        store.save(pid, "templated", np.ones((L, H), np.float32), name=pid, sample_ids=["q"])
    rc = main(["analyze", "--model", MODEL, "--source", str(tmp_path), "--no-png",
               "--variant", "templated", "biography", "--out", str(tmp_path / "o")])  # fmt: skip
    assert rc == 2
    assert "--variant biography: no answer_mean vectors for it (saved: templated)" in _error_line(
        capsys
    )


def test_probes_leave_out_single_member_classes(tmp_path):
    from pvrs.analysis.report import ReportOptions, VectorSet, run_analysis

    rng = np.random.default_rng(1)
    ids = [f"p{i}" for i in range(7)]
    x = rng.standard_normal((7, 2, 8)).astype(np.float32)
    kinds = ["a", "b", "a", "b", "a", "b", "lonely"]
    x[:, :, 0] += np.array([3.0 if k == "a" else -3.0 for k in kinds])[:, None]
    attrs = {
        p: {"kind": k, "tone": f"t{i}"} for i, (p, k) in enumerate(zip(ids, kinds, strict=True))
    }
    vs = VectorSet("answer_mean", "templated", ids, ids, [0, 1], x, "tiny/m")
    opts = ReportOptions(attributes=attrs, png=False, probe_methods=["diffmeans"], folds=3)
    res = run_analysis([vs], tmp_path / "o", opts)
    assert any("left out 1 persona(s)" in n and "p6" in n for n in res.notes)
    assert any("'tone' skipped" in n for n in res.notes)  # every class has one member
    (probe,) = res.summary["probes"]
    assert probe["attribute"] == "kind" and probe["score"] == 1.0
    art = load_probe_artifact(probe["artifact"])
    assert art.classes == ["a", "b"] and art.meta["model"] == "tiny/m"
    assert art.meta["n_personas"] == 6


def test_png_export_without_a_browser_is_one_clear_line(store_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("pvrs.analysis.export.png_browser", lambda: None)
    rc = main(
        ["analyze", "--model", MODEL, "--source", str(store_root), "--out", str(tmp_path / "o")]
    )
    assert rc == 2
    line = _error_line(capsys)
    assert "PNG export needs Chrome or Chromium" in line and "--no-png" in line


def test_notes_print_brackets_as_written(store_root, tmp_path, monkeypatch, capsys):
    from pvrs.analysis import report

    real = report.run_analysis

    def noted(*args, **kwargs):
        result = real(*args, **kwargs)
        result.notes.append("umap skipped: pip install 'pvrs[umap]'")  # not rich markup
        return result

    monkeypatch.setattr(report, "run_analysis", noted)
    rc = main(["analyze", "--model", MODEL, "--source", str(store_root), "--no-png", "--no-geometry",
               "--out", str(tmp_path / "o")])  # fmt: skip
    assert rc == 0
    assert "pip install 'pvrs[umap]'" in capsys.readouterr().err


def test_neighbours_of_a_persona_are_printed(store_root, tmp_path, capsys):
    args = ["analyze", "--model", MODEL, "--source", str(store_root), "--no-png",
            "--out", str(tmp_path / "o"), "--neighbours", "2"]  # fmt: skip
    assert main([*args, "--neighbours-of", "pirate"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("nearest to pirate"))
    assert line.split(": ", 1)[1].count("(") == 2  # two neighbours with their cosines
    with (tmp_path / "o" / "tables" / "neighbours.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["persona_id"] == "pirate"]
    assert [r["neighbour_id"] for r in rows] == [
        part.split(" (")[0] for part in line.split(": ", 1)[1].split(", ")
    ]
    assert main([*args, "--neighbours-of", "zz"]) == 2
    assert "--neighbours-of zz: no such persona" in _error_line(capsys)


@needs_browser
def test_png_of_a_slider_figure_renders_at_its_own_size(tmp_path):
    from pvrs.analysis import compute as an
    from pvrs.analysis import export, plots

    rng = np.random.default_rng(3)
    ids = [*ROLES, an.BASELINE_ID]
    x = rng.standard_normal((len(ids), L, H)).astype(np.float32)
    x[-1, :, 0] += 4.0
    axis = an.assistant_axis(x, ids, list(range(L)))
    fig = plots.axis_projection_figure(axis, ids, 2)
    assert fig.layout.sliders  # the HTML slides; the PNG is the focus layer's still
    (path,) = export.write_pngs([export.Section("axis", "", "", fig)], tmp_path)
    assert _png_size(path) == (
        fig.layout.width * export.PNG_SCALE,
        fig.layout.height * export.PNG_SCALE,
    )


def _planted_clusters() -> tuple[list[str], np.ndarray, dict[str, dict[str, object]]]:
    """24 personas in three tight clusters at layer 1 (noise at layers 0 and 2), with a
    categorical and a numeric attribute."""
    rng = np.random.default_rng(0)
    truth = np.repeat([0, 1, 2], 8)
    x = rng.standard_normal((24, 3, 32))
    x[:, 1] = rng.standard_normal((3, 32))[truth] * 6 + 0.3 * rng.standard_normal((24, 32))
    ids = [f"p{i:02d}" for i in range(24)]
    attrs = {p: {"kind": "abc"[t], "age": 20 + i} for i, (p, t) in enumerate(zip(ids, truth, strict=True))}
    return ids, x.astype(np.float32), attrs


class _FakeUMAP:
    """umap.UMAP's interface, fitted as a PCA (the real one JIT-compiles for a minute)."""

    def __init__(self, n_components: int, **_kw: object) -> None:
        self.n_components = n_components

    def fit_transform(self, x: np.ndarray) -> np.ndarray:
        centred = x - x.mean(0)
        return centred @ np.linalg.svd(centred, full_matrices=False)[2][: self.n_components].T


@pytest.mark.parametrize("umap_installed", [False, True])
def test_geometry_views_find_planted_clusters_and_colour_by_attributes(
    tmp_path, monkeypatch, umap_installed
):
    import sys
    import types

    from pvrs.analysis.report import ReportOptions, VectorSet, run_analysis

    fake = types.SimpleNamespace(UMAP=_FakeUMAP) if umap_installed else None
    monkeypatch.setitem(sys.modules, "umap", fake)  # None: `import umap` fails
    ids, x, attrs = _planted_clusters()
    vs = VectorSet("answer_mean", "templated", ids, ids, [0, 1, 2], x, "tiny/m")
    opts = ReportOptions(attributes=attrs, png=False, probe_methods=["diffmeans"], folds=2)
    res = run_analysis([vs], tmp_path / "o", opts)
    page = res.html.read_text()
    scatters = ["pca_2d", "pca_3d", "isomap", *(["umap"] if umap_installed else [])]
    for section in [*scatters, "kmeans", "dendrogram"]:
        assert f'id="{section}"' in page, section
    assert ('id="umap"' in page) is umap_installed
    assert any("pip install 'pvrs[umap]'" in n for n in res.notes) is not umap_installed
    # One colour-by menu per scatter, one entry per attribute (and the k-means clusters).
    for label in ("k-means cluster", "age", "kind"):
        assert page.count(f'"label":"{label}"') == len(scatters), label
    with (res.out_dir / "tables" / "kmeans_layers.csv").open() as f:
        by_layer = {r["layer"]: r for r in csv.DictReader(f)}
    assert by_layer["1"]["k"] == "3" and float(by_layer["1"]["silhouette"]) > 0.8
    with (res.out_dir / "tables" / "kmeans_clusters.csv").open() as f:
        found = {r["persona_id"]: r["layer_1"] for r in csv.DictReader(f)}
    groups = {tuple(sorted(p for p in ids if found[p] == c)) for c in set(found.values())}
    assert groups == {tuple(ids[i : i + 8]) for i in (0, 8, 16)}
    with (res.out_dir / "tables" / "embeddings.csv").open() as f:
        header = next(csv.reader(f))
    assert header[2:] == ["isomap1", "isomap2", *(["umap1", "umap2"] if umap_installed else [])]
    geometry = res.summary["geometry"]
    assert geometry["normalize"] == "center" and geometry["kmeans_k_at_focus"] == 3
    assert geometry["embeddings"] == ["isomap", *(["umap"] if umap_installed else [])]


def test_geometry_flags(store_root, tmp_path):
    base = ["analyze", "--model", MODEL, "--source", str(store_root), "--no-png"]
    assert main([*base, "--out", str(tmp_path / "skip"), "--no-geometry"]) == 0
    assert "geometry" not in json.loads((tmp_path / "skip" / "summary.json").read_text())
    assert not (tmp_path / "skip" / "tables" / "kmeans_layers.csv").exists()
    assert 'id="dendrogram"' not in (tmp_path / "skip" / "report.html").read_text()
    assert main([*base, "--out", str(tmp_path / "unit"), "--geometry-normalize", "center-unit"]) == 0
    summary = json.loads((tmp_path / "unit" / "summary.json").read_text())
    assert summary["geometry"]["normalize"] == "center-unit"
    assert (tmp_path / "unit" / "tables" / "kmeans_clusters.csv").exists()
