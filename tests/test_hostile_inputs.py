"""Hostile stores and input files against every reader (issue 25): a manifest linked out of
the store, a tensor linked to another persona's, damaged manifests, JSON nested 100,000
deep. Each reader refuses with one line naming the file (or, for extract, recomputes what it
cannot trust), and nothing outside the store is read or published."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from pvrs.cli import main
from pvrs.engines.models import model_dir_name
from pvrs.errors import InputError
from pvrs.store.validation import validate

from tests.test_extract import tiny_model_dir  # noqa: F401  (fixture)

PIRATE, NOIR = "pirate_captain", "noir_detective"
NESTED = "[" * 100_000


@pytest.fixture(scope="module")
def extracted(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """A store `pvrs extract` wrote (built-in personas, templated): copied by each test."""
    root = tmp_path_factory.mktemp("extracted") / "store"
    assert main(_extract_args(tiny_model_dir, root)) == 0
    return root


def _extract_args(model: Path, root: Path) -> list[str]:
    return ["extract", "--model", str(model), "--output-dir", str(root), "--variants", "templated", "--threads", "1"]


def _variant_dir(root: Path, model: Path) -> Path:
    return root / model_dir_name(str(model)) / "answer_mean" / "templated"


def _edit(folder: Path, change: Callable[[dict], object]) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def _manifest_linked_out(folder: Path) -> None:
    outside = folder.parents[3] / "outside.json"
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["personas"][PIRATE]["name"] = "LEAKED FROM OUTSIDE"
    outside.write_text(json.dumps(manifest))
    (folder / "manifest.json").unlink()
    (folder / "manifest.json").symlink_to(outside)


def _tensor_linked_inside(folder: Path) -> None:
    (folder / f"{PIRATE}.safetensors").unlink()
    (folder / f"{PIRATE}.safetensors").symlink_to(f"{NOIR}.safetensors")


# Each damage, and what the one error line says about it.
CASES: dict[str, tuple[Callable[[Path], object], str]] = {
    "manifest_symlink": (_manifest_linked_out, "not a regular file"),
    "tensor_symlink": (_tensor_linked_inside, "symbolic link"),
    "negative_n_samples": (lambda f: _edit(f, lambda m: m["personas"][PIRATE].update(n_samples=-5)), "n_samples"),
    "huge_num_layers": (lambda f: _edit(f, lambda m: m.update(num_layers=1e30)), "num_layers"),
    "edited_model": (lambda f: _edit(f, lambda m: m.update(model="someone/else")), "model"),
    "nested_manifest": (lambda f: (f / "manifest.json").write_text(NESTED), "not valid JSON"),
}


def _reader_args(reader: str, model: Path, root: Path, out: Path) -> list[str]:
    m = str(model)
    if reader == "validate":
        return ["validate", str(root)]
    if reader == "analyze":
        return ["analyze", "--model", m, "--source", str(root), "--no-png", "--out", str(out)]
    if reader == "export":
        return ["export", "--model", m, "--source", str(root), "--persona-id", PIRATE, "--layer", "1", "--out", str(out / "v.gguf")]
    if reader == "probe":
        return ["probe", "--model", m, "--source", str(root), "--attribute", "kind", "--out", str(out)]
    if reader == "import":
        out.mkdir()
        torch.save(torch.ones(2, 16), out / "imported.pt")
        return ["import", str(out / "imported.pt"), "--model", m, "--output-dir", str(root), "--num-layers", "2"]
    if reader == "push":
        return ["push", "--model", m, "--source", str(root), "--dry-run", "--out", str(out)]
    return _extract_args(model, root)


READERS = ("validate", "analyze", "export", "probe", "import", "push", "extract")


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("reader", READERS)
def test_every_reader_refuses_a_hostile_store(
    reader: str,
    case: str,
    extracted: Path,
    tiny_model_dir: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    damage, said = CASES[case]
    if reader == "import" and case == "tensor_symlink":
        pytest.skip("import writes a new persona and reads no persona's file")
    root = tmp_path / "store"
    shutil.copytree(extracted, root, symlinks=True)
    folder = _variant_dir(root, tiny_model_dir)
    damage(folder)
    capsys.readouterr()
    rc = main(_reader_args(reader, tiny_model_dir, root, tmp_path / "out"))
    out, err = capsys.readouterr()
    if reader == "extract" and case == "tensor_symlink":
        # Resume does not trust the link: the persona is computed again into a real file.
        assert rc == 0, err
        assert not (folder / f"{PIRATE}.safetensors").is_symlink() and validate(root, deep=True).ok
        return
    if reader == "validate":
        assert rc == 1 and said in out, out
        return
    assert rc in (1, 2), (out, err)
    # extract reports its plan and loads the model first: its error is the one error line.
    lines = [line for line in err.strip().splitlines() if reader != "extract" or "error:" in line]
    assert len(lines) == 1 and said in lines[0] and "Traceback" not in err, err
    published = tmp_path / "out"
    assert not any(
        "LEAKED" in p.read_bytes().decode("latin-1") for p in published.rglob("*") if p.is_file()
    )


# ---- input files nested 100,000 deep --------------------------------------------------


def _nested(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_text(NESTED)
    return path


def _read_rows(path: Path) -> object:
    from pvrs.extraction.inputs import read_rows

    return read_rows(path)


def _conversation(path: Path) -> object:
    from pvrs.steering.monitor import load_conversation

    return load_conversation(path)


def _trait(path: Path) -> object:
    from pvrs.judge.trait import load_trait_file

    return load_trait_file(path)


def _rubric(path: Path) -> object:
    from pvrs.judge.rubrics import _rubric_text

    return _rubric_text(path, path.read_text(), "--rubric")


def _adapter_config(path: Path) -> object:
    from pvrs.training.models import _recorded_base

    return _recorded_base(path.parent)


# extract --personas/--qa, judge answers, screen --data, contrast and steer --prompts read
# through `read_rows`; monitor, trait and --rubric have their own formats.
@pytest.mark.parametrize(
    ("reader", "name"),
    [
        (_read_rows, "rows.json"),
        (_read_rows, "rows.jsonl"),
        (_conversation, "conversation.json"),
        (_trait, "trait.json"),
        (_rubric, "rubric.json"),
        (_rubric, "rubric.yaml"),
        (_adapter_config, "adapter_config.json"),  # pvrs shift --tuned
    ],
)
def test_deeply_nested_json_is_one_input_error(
    reader: Callable[[Path], object], name: str, tmp_path: Path
) -> None:
    path = _nested(tmp_path, name)
    with pytest.raises(InputError, match="nested too deeply") as info:
        reader(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_extract_with_a_nested_personas_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _nested(tmp_path, "personas.json")
    assert main(["extract", "--personas", str(path), "--output-dir", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "nested too deeply" in err[0], err


def test_a_dataset_card_nested_too_deeply_is_one_packaging_error() -> None:
    from pvrs.errors import PackagingError
    from pvrs.hub.cards import split_card

    with pytest.raises(PackagingError, match=r"not valid YAML \(nested too deeply\)"):
        split_card(f"---\n{NESTED}\n---\nbody")
