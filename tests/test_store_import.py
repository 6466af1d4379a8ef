"""`pvrs import`: .pt vectors from other tools, with and without the embedding row, and llama.cpp
control vectors (.gguf)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pvrs.cli import main
from pvrs.errors import ArtifactError, InputError, InvalidArgumentError
from pvrs.store import PersonaVectorStore
from pvrs.store.importers import import_vectors

L, H = 4, 6


def write_pt(folder: Path, name: str, rows: int, seed: int = 0, wrap: bool = False) -> torch.Tensor:
    folder.mkdir(parents=True, exist_ok=True)
    t = torch.randn(rows, H, generator=torch.Generator().manual_seed(seed))
    torch.save({"vector": t} if wrap else t, folder / f"{name}.pt")
    return t


def test_with_embedding_row_is_dropped_and_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "src"
    a = write_pt(src, "pirate", L + 1, 0)
    b = write_pt(src, "chef", L + 1, 1, wrap=True)
    root = tmp_path / "store"
    rc = main(
        ["import", str(src), "--model", "org/x", "--num-layers", str(L), "--output-dir", str(root)]
    )
    out = capsys.readouterr().out
    assert rc == 0 and f"({L - 1}, {H})" in out and "dropped row 0 (embeddings) and the final norm's row" in out
    store = PersonaVectorStore("org/x", root_dir=root)
    assert store.list_personas(["templated"]) == ["chef", "pirate"]
    np.testing.assert_array_equal(store.load("pirate", "templated"), a[1:-1].numpy())
    np.testing.assert_array_equal(store.load("chef", "templated"), b[1:-1].numpy())
    manifest = json.loads(store.manifest_path("templated").read_text())
    assert manifest["num_layers"] == L - 1
    assert manifest["layer_convention"] == "decoder_block_outputs"
    assert manifest["source_layer_convention"] == "hidden_states_embeddings_blocks_final_norm"
    assert main(["validate", str(root), "--deep"]) == 0


def test_anthropic_layout_rows_are_read_as_the_blocks_they_come_from(tmp_path: Path) -> None:
    """persona_vectors' generate_vec.py saves means of `output_hidden_states`: L+1 rows, row 0
    the embeddings, row i block i-1's output, and row L the FINAL NORM of block L-1's output
    (transformers applies it to the last entry). Row i of pvrs is block i: the file's row i+1;
    its last row is no block's output and is dropped, never taken as block L-1."""
    import warnings

    from pvrs.steering.directions import load_vector

    from tests.tiny_models import tiny_model

    model = tiny_model("llama")
    blocks: dict[int, torch.Tensor] = {}
    hooks = [
        layer.register_forward_hook(lambda _m, _i, out, k=k: blocks.__setitem__(k, out[0] if isinstance(out, tuple) else out))
        for k, layer in enumerate(model.model.layers)
    ]
    with torch.no_grad():
        hidden = model(torch.tensor([[1, 2, 3, 4, 5]]), output_hidden_states=True).hidden_states
    for hook in hooks:
        hook.remove()
    n = len(blocks)
    # generate_vec.py: one row per entry of hidden_states, the mean over the answer's tokens.
    rows = torch.stack([h[0].mean(0) for h in hidden])
    block_means = torch.stack([blocks[k][0].mean(0) for k in range(n)]).numpy()
    assert rows.shape[0] == n + 1 and not np.allclose(rows[n].numpy(), block_means[n - 1])
    src = tmp_path / "src"
    src.mkdir()
    torch.save(rows, src / "evil_response_avg_diff.pt")

    with pytest.warns(UserWarning, match=rf"layer 1 is its row 2; row 0 .embeddings. and row {n} .the final norm"):
        np.testing.assert_allclose(load_vector(src / "evil_response_avg_diff.pt", layer=1, num_layers=n), block_means[1], rtol=1e-5, atol=1e-6)
    for last in (n - 1, -1):
        with pytest.raises(InvalidArgumentError, match=f"no output of block {n - 1}: its row {n} is the final norm's"):
            load_vector(src / "evil_response_avg_diff.pt", layer=last, num_layers=n)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the model's own (L, H) rows are read as they are
        np.testing.assert_array_equal(load_vector(src / "evil_response_avg_diff.pt"), rows.numpy())

    # `pvrs steer --vector FILE` (from_spec) reads the layer count from the store's model.
    from pvrs.steering.directions import from_spec

    model.config.save_pretrained(tmp_path / "model")
    with pytest.warns(UserWarning, match="read as output_hidden_states"):
        spec = from_spec(str(src / "evil_response_avg_diff.pt"), PersonaVectorStore(str(tmp_path / "model"), root_dir=tmp_path))
    np.testing.assert_allclose(spec, block_means[: n - 1], rtol=1e-5, atol=1e-6)

    store = PersonaVectorStore("org/x", root_dir=tmp_path / "store")
    result = import_vectors([src], store, "templated", num_layers=n)
    assert result.num_layers == n - 1
    np.testing.assert_allclose(store.load("evil_response_avg_diff", "templated"), block_means[: n - 1], rtol=1e-5, atol=1e-6)


def test_blocks_only_files_and_model_config(tmp_path: Path) -> None:
    from transformers import LlamaConfig

    model_dir = tmp_path / "tiny"
    LlamaConfig(
        hidden_size=H, num_hidden_layers=L, num_attention_heads=2, intermediate_size=8
    ).save_pretrained(model_dir)
    t = write_pt(tmp_path / "src", "diver", L)
    store = PersonaVectorStore(str(model_dir), root_dir=tmp_path / "store")
    result = import_vectors([tmp_path / "src" / "diver.pt"], store, "biography")
    assert result.source_layer_convention == "decoder_block_outputs" and result.num_layers == L
    np.testing.assert_array_equal(store.load("diver", "biography"), t.numpy())


def test_builtin_model_reads_its_converted_config_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store names the built-in by its Hub id; its layer count comes from the converted
    folder under $PVRS_CACHE_DIR, with no Hub access."""
    from pvrs.engines.models import SMOLLM2
    from pvrs.store.importers import model_num_layers
    from transformers import LlamaConfig

    monkeypatch.setenv("PVRS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    LlamaConfig(num_hidden_layers=L).save_pretrained(SMOLLM2.cache_path())
    assert model_num_layers(SMOLLM2.hf_id) == L
    assert model_num_layers(SMOLLM2.name) == L


def test_bad_inputs_name_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pvrs.store.importers.model_num_layers", lambda model: None)  # no Hub lookup
    store = PersonaVectorStore("org/x", root_dir=tmp_path / "store")
    src = tmp_path / "src"
    write_pt(src, "a", L + 1)
    write_pt(src, "b", L)
    with pytest.raises(InputError, match="mix"):
        import_vectors([src], store, "templated", num_layers=L)
    with pytest.raises(InputError, match=r"b\.pt: 4 rows, but the model has 2 layers"):
        import_vectors([src / "b.pt"], store, "templated", num_layers=2)
    write_pt(src / "one", "tiny", 2)  # a one-block model: its only row is the final norm's
    with pytest.raises(InputError, match=r"tiny\.pt: 2 rows of output_hidden_states hold no block output"):
        import_vectors([src / "one"], store, "templated", num_layers=1)
    with pytest.raises(InputError, match="--num-layers"):
        import_vectors([src / "b.pt"], store, "templated")  # unknown model: cannot tell the layout
    torch.save(torch.zeros(2, 3, 4), src / "c.pt")
    with pytest.raises(InputError, match=r"c\.pt: expected a 2-D"):
        import_vectors([src / "c.pt"], store, "templated", layout="blocks")

    class Evil:
        def __reduce__(self):  # a pickle that would run code
            return (print, ("pwned",))

    torch.save({"x": Evil()}, src / "evil.pt")
    with pytest.raises(
        InputError, match=r"evil\.pt: cannot load with torch\.load\(weights_only=True\)"
    ):
        import_vectors([src / "evil.pt"], store, "templated", layout="blocks")
    assert not store.variant_dir("templated").exists()  # nothing written by failed imports
    assert main(["import", str(tmp_path / "missing"), "--model", "org/x"]) == 2


def test_control_vectors_import_row_for_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pvrs.store.controlvector import write_control_vector

    rng = np.random.default_rng(0)
    vector = rng.standard_normal((L, H)).astype(np.float32)
    src = tmp_path / "src"
    write_control_vector(vector, src / "pirate.gguf", layers=[1, 3])
    root = tmp_path / "store"
    model = str(tmp_path / "model-without-config")  # a local name: no Hub lookup for a config
    argv = ["import", str(src), "--model", model, "--output-dir", str(root)]
    assert main(argv) == 2  # the file alone cannot say how many blocks the model has
    assert "--num-layers" in capsys.readouterr().err
    assert main([*argv, "--num-layers", str(L)]) == 0
    assert "blocks without a direction are zero rows" in capsys.readouterr().out
    store = PersonaVectorStore(model, root_dir=root)
    loaded = store.load("pirate", "templated")
    np.testing.assert_array_equal(loaded[[1, 3]], vector[[1, 3]])
    assert not loaded[[0, 2]].any()
    manifest = json.loads(store.manifest_path("templated").read_text())
    assert manifest["source_layer_convention"] == "llama_cpp_control_vector"
    assert main(["validate", str(root), "--deep"]) == 0
    # A control vector steering a block the model does not have is refused, nothing written.
    write_control_vector(np.zeros((8, H), np.float32), tmp_path / "deep" / "big.gguf", layers=[7])
    with pytest.raises(ArtifactError, match=r"has direction\.7 but the model has 4 layers"):
        import_vectors([tmp_path / "deep"], store, "templated", num_layers=L)
    assert store.list_personas(["templated"]) == ["pirate"]
    # .pt and .gguf files have different layouts: one kind per import, one kind per folder.
    write_pt(src, "chef", L)
    with pytest.raises(InputError, match="the files mix layouts"):
        import_vectors([src], store, "biography", num_layers=L)
    with pytest.raises(InputError, match=r"already holds llama\.cpp control vectors"):
        import_vectors([src / "chef.pt"], store, "templated", num_layers=L)
    import_vectors([src / "chef.pt"], store, "biography", num_layers=L)
    with pytest.raises(InputError, match=r"already holds persona vectors \(mean activations\)"):
        import_vectors([src / "pirate.gguf"], store, "biography", num_layers=L)
    with pytest.raises(InputError, match=r"--layout is for \.pt files"):
        import_vectors([src / "pirate.gguf"], store, "control", layout="blocks", num_layers=L)
    import_vectors([src / "pirate.gguf"], store, "control", num_layers=L)  # a folder of its own
    assert store.list_personas(["control"]) == ["pirate"]


def test_non_float_pt_and_gguf_are_refused_before_anything_is_saved(tmp_path: Path) -> None:
    """int8 (maybe quantized), bool and complex tensors are no vectors: casting them would
    store silently wrong numbers (complex loses its imaginary part)."""
    import gguf

    src = tmp_path / "src"
    src.mkdir()
    store = PersonaVectorStore("org/x", root_dir=tmp_path / "store")
    for dtype in (torch.int8, torch.bool, torch.complex64):
        torch.save(torch.ones(L, H, dtype=dtype), src / "odd.pt")
        with pytest.raises(InputError, match=r"odd\.pt: holds torch\.\w+ values, not real floats"):
            import_vectors([src / "odd.pt"], store, "templated", layout="blocks")
    writer = gguf.GGUFWriter(str(src / "cv.gguf"), "controlvector")
    writer.add_tensor("direction.1", np.ones((2, H), np.float32))  # two rows as one direction
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ArtifactError, match=r"cv\.gguf: direction\.1 is F32 of shape"):
        import_vectors([src / "cv.gguf"], store, "templated", num_layers=L)
    assert not store.variant_dir("templated").exists()


def test_an_import_never_replaces_a_saved_persona_without_force(tmp_path: Path) -> None:
    """A downloaded `pirate.pt` must not silently replace the `pirate` vector already
    extracted into the store."""
    root = tmp_path / "store"
    store = PersonaVectorStore("org/x", root_dir=root)
    mine = np.ones((L, H), np.float32)
    store.save("pirate", "templated", mine, name="Pirate", sample_ids=["q1"])
    downloaded = write_pt(tmp_path / "src", "pirate", L, 3)
    argv = ["import", str(tmp_path / "src"), "--model", "org/x", "--num-layers", str(L), "--output-dir", str(root)]
    assert main(argv) == 2
    np.testing.assert_array_equal(store.load("pirate", "templated"), mine)
    with pytest.raises(InputError, match=r"already holds pirate; pass --force"):
        import_vectors([tmp_path / "src"], store, "templated", num_layers=L)
    assert main([*argv, "--force"]) == 0
    np.testing.assert_array_equal(store.load("pirate", "templated"), downloaded.numpy())


def test_a_pt_holding_a_numpy_array_is_one_plain_line(tmp_path: Path) -> None:
    """torch's 'Weights only load failed' message (ANSI bold, torch's unsafe advice, many
    lines) never reaches the user: one line of pvrs's own naming the file and what it holds."""
    from pvrs.steering.directions import load_vector

    src = tmp_path / "src"
    src.mkdir()
    torch.save({"vector": torch.ones(L, H), "meta": np.arange(3)}, src / "meta.pt")
    for load, error in (
        (lambda: load_vector(src / "meta.pt"), ArtifactError),
        (lambda: import_vectors([src / "meta.pt"], PersonaVectorStore("org/x", root_dir=tmp_path), "templated", layout="blocks"), InputError),
    ):
        with pytest.raises(error, match="holds Python objects") as caught:
            load()
        text = str(caught.value)
        assert "meta.pt" in text and "\n" not in text and "\x1b" not in text
        assert "Weights only load failed" not in text and "weights_only=False" not in text
