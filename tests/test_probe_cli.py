"""`pvrs probe`: planted attributes (categorical and ordinal) recovered from a store, rare
classes reported not fatal, PCA inside the folds, and the saved probes read back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pvrs.analysis.probes import (
    cross_validate_probe,
    drop_rare_classes,
    fit_probe,
    load_probe_artifact,
    ordinal_ranks,
)
from pvrs.cli import main
from pvrs.errors import InputError
from pvrs.store import PersonaVectorStore

MODEL, L, H, P = "tiny/probe-model", 9, 24, 30
LEVELS = ("low", "mid", "high")


def _planted() -> tuple[np.ndarray, list[str], dict[str, dict[str, object]]]:
    """Vectors where layer 6 carries `kind` (two dimensions) and `level` (an ordered rank
    along one dimension); `kind` has a class of one persona."""
    rng = np.random.default_rng(0)
    ids = [f"p{i:02d}" for i in range(P)]
    x = rng.standard_normal((P, L, H)).astype(np.float32)
    attrs: dict[str, dict[str, object]] = {}
    for i, pid in enumerate(ids):
        kind = "wizard" if i == 0 else ("hero", "villain")[i % 2]
        level = LEVELS[i % 3]
        x[i, 6, 0] += 4.0 * (kind == "villain")
        x[i, 6, 1] += 3.0 * LEVELS.index(level)
        attrs[pid] = {"kind": kind, "level": level}
    return x, ids, attrs


@pytest.fixture
def store_and_personas(tmp_path: Path) -> tuple[Path, Path]:
    x, ids, attrs = _planted()
    root = tmp_path / "store"
    store = PersonaVectorStore(MODEL, root_dir=root, mask_strategy="answer_mean")
    for i, pid in enumerate(ids):
        store.save(pid, "templated", x[i], name=pid, sample_ids=["q"])
    rows = [{"id": p, "name": p, "templated": "t", "biography": "b", **attrs[p]} for p in ids]
    personas = tmp_path / "personas.jsonl"
    personas.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root, personas


def test_ordinal_ranks_and_rare_classes():
    _, ids, attrs = _planted()
    ranked = ordinal_ranks(attrs, "level", LEVELS)
    assert {ranked[p]["level"] for p in ids} == {0, 1, 2}
    with pytest.raises(InputError, match="'mid' is not in the order"):
        ordinal_ranks(attrs, "level", ["low", "high"])
    kept, rare = drop_rare_classes(attrs, ids, "kind", 2)
    assert rare == {"wizard": 1} and "kind" not in kept["p00"] and kept["p01"]["kind"] == "villain"
    with pytest.raises(InputError, match="lower --min-class-count"):
        drop_rare_classes(attrs, ids, "kind", 16)


def test_pca_probe_is_saved_as_a_map_on_raw_vectors():
    x, ids, attrs = _planted()
    kept, _ = drop_rare_classes(attrs, ids, "kind", 2)
    curve = cross_validate_probe(x, ids, list(range(L)), kept, "kind", "logistic", pca_components=5)
    assert curve.best_layer == 6 and curve.scores[6] >= 0.9
    art = fit_probe(x, ids, list(range(L)), kept, curve)
    assert art.weight.shape == (1, H) and art.meta["pca_components"] == 5
    truth = np.array([attrs[p]["kind"] for p in ids[1:]])
    assert (art.predict(x[1:, 6]) == truth).mean() >= 0.9
    with pytest.raises(InputError, match="--pca-components 40"):
        cross_validate_probe(x[:, 6:7], ids, [6], kept, "kind", "logistic", pca_components=40)


def test_probe_command_recovers_planted_attributes(store_and_personas, tmp_path, capsys):
    root, personas = store_and_personas
    out = tmp_path / "probes"
    rc = main(["probe", "--model", MODEL, "--source", str(root), "--persona-file", str(personas),
               "--all-layers", "--ordinal", "level=low,mid,high", "--method", "logistic", "ridge",
               "--out", str(out)])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "left out class(es) with fewer than 2 personas: 'wizard' (1)" in captured.err
    level = load_probe_artifact(out / "level-ridge")
    assert level.task == "regression" and level.layer == 6 and level.meta["ordinal"] == list(LEVELS)
    x, _, _ = _planted()
    ranks = np.arange(P) % 3
    assert np.corrcoef(level.predict(x[:, 6]), ranks)[0, 1] > 0.9
    kind = load_probe_artifact(out / "kind-logistic")
    assert kind.layer == 6 and kind.classes == ["hero", "villain"]
    assert not (out / "level-logistic").exists()  # an ordinal attribute is a regression
    doc = json.loads((out / "kind-logistic" / "probe.json").read_text())
    assert doc["format"] == "pvrs.probe" and doc["schema_version"] == 1
    assert "kind" in captured.out and "level" in captured.out and "ordinal" in captured.out


def test_probe_command_default_layers_and_mistakes(store_and_personas, tmp_path, capsys):
    root, personas = store_and_personas
    base = ["probe", "--model", MODEL, "--source", str(root), "--persona-file", str(personas),
            "--out", str(tmp_path / "o")]  # fmt: skip
    assert main([*base, "--attribute", "kind", "--method", "diffmeans"]) == 0
    assert load_probe_artifact(tmp_path / "o" / "kind-diffmeans").layer in (0, 2, 4, 6, 8)
    assert "layers [0, 2, 4, 6, 8]" in capsys.readouterr().out
    for extra, message in [
        (["--attribute", "colour"], "'colour' is not a column of the persona file"),
        (["--ordinal", "level"], "is not ATTR=LOW,...,HIGH"),
        (["--attribute", "kind", "--min-class-count", "20"], "lower --min-class-count"),
    ]:
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_probe_notes_print_brackets_as_written(store_and_personas, tmp_path, capsys):
    root, personas = store_and_personas
    renamed = tmp_path / "renamed.jsonl"
    renamed.write_text(personas.read_text().replace('"kind"', '"kind[v2]"'))
    rc = main(["probe", "--model", MODEL, "--source", str(root), "--persona-file", str(renamed),
               "--method", "diffmeans", "--out", str(tmp_path / "o")])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0 and "note: kind[v2]: left out" in captured.err, captured.err  # not rich markup
    assert "│ kind[v2] " in captured.out


def test_probe_with_nothing_to_probe_is_an_error_not_an_empty_table(store_and_personas, tmp_path, capsys):
    root, personas = store_and_personas
    other = tmp_path / "other.jsonl"
    other.write_text(personas.read_text().replace('"id": "p', '"id": "x'))
    bare = tmp_path / "bare.jsonl"
    bare.write_text("".join(json.dumps({"id": f"p{i:02d}", "name": "n"}) + "\n" for i in range(P)))
    strings = tmp_path / "strings.json"
    strings.write_text('["p00", "p01"]')
    base = ["probe", "--model", MODEL, "--source", str(root), "--out", str(tmp_path / "o")]
    for extra, message in [
        ([], "not of the built-in personas"),
        (["--persona-file", str(other)], "none of its persona ids are among the vectors' (p00, p01, p02, ...)"),
        (["--persona-file", str(bare)], "no attribute columns"),
        (["--persona-file", str(strings)], "row 1: expected a JSON object"),
    ]:
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    # An --ordinal order that misses a value is the user's mistake, not a note.
    assert main([*base, "--persona-file", str(personas), "--ordinal", "level=low,high"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "pvrs probe: error: persona 'p01': level='mid' is not in the order given (low, high); add it"]
    # Every attribute skipped (one persona of one class): the notes say why, and the run fails.
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"id": "p00", "kind": "hero"}) + "\n")
    assert main([*base, "--persona-file", str(one)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "skipped" in err[0] and err[-1] == "pvrs probe: error: no attribute could be probed (see the notes above)"
    assert not any((tmp_path / "o").glob("*/probe.json"))
