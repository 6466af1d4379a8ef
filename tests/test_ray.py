"""`pvrs extract --ray`: the same store as a single process, nothing lost when a replica dies,
resume across Ray and plain runs, user errors before any work, nothing listening beyond
127.0.0.1. One local Ray for the module (it takes seconds to start); the tests of a fake-GPU
cluster come last, as the driver joins one Ray at a time."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from pvrs.cli import main
from pvrs.engines.models import ModelSpec, model_dir_name

from tests.test_extract import tiny_model_dir  # noqa: F401  (fixture)

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module", autouse=True)
def _ray_down_after_the_module() -> Iterator[None]:
    yield
    ray.shutdown()


@pytest.fixture
def local_ray() -> object:
    """The local Ray that `--ray` alone starts (two CPUs, whatever the machine has), kept for
    the next test."""
    from pvrs.engines import ray_engine

    if not ray.is_initialized():
        ray_engine.start_local(num_cpus=2)
    return ray


def _inputs(tmp_path: Path, n: int) -> list[str]:
    personas = tmp_path / "personas.jsonl"
    personas.write_text("".join(
        json.dumps({"id": f"p{i:02d}", "name": f"P{i}", "templated": f"You are persona number {i}.",
                    "biography": f"Persona {i} was born in a town with {i} bridges."}) + "\n"
        for i in range(n)
    ))
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(
        json.dumps({"qid": f"q{j}", "question": f"Question {j}?", "answer": f"Answer {j}, I think."}) + "\n" for j in range(3)
    ))
    return ["--personas", str(personas), "--qa", str(qa)]


def _cli_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[object, str]:
    """The exit code and last stderr line of a run that must stop on a user error."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    return code, capsys.readouterr().err.strip().splitlines()[-1]


def _store(root: Path) -> dict[str, object]:
    """Every file of a store; manifests without their timestamps."""
    out: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name.endswith(".lock"):
            continue
        if path.name == "manifest.json":
            manifest = json.loads(path.read_text())
            for entry in manifest["personas"].values():
                entry.pop("created_at", None)
            manifest.pop("created_at", None)
            manifest.pop("updated_at", None)
            out[str(path.relative_to(root))] = manifest
        elif path.suffix == ".safetensors":
            # The header as JSON (safetensors writes metadata keys in a per-process hash order),
            # the tensor bytes as bytes.
            data = path.read_bytes()
            size = int.from_bytes(data[:8], "little")
            out[str(path.relative_to(root))] = (json.loads(data[8 : 8 + size]), data[8 + size :])
        else:
            out[str(path.relative_to(root))] = path.read_bytes()
    return out


def test_ray_run_writes_what_a_single_process_writes(local_ray: object, tiny_model_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    base = ["extract", "--model", str(tiny_model_dir), *_inputs(tmp_path, 4), "--mask-strategy", "all", "--save-samples", "--threads", "1"]
    assert main([*base, "--output-dir", str(tmp_path / "plain")]) == 0
    assert main([*base, "--output-dir", str(tmp_path / "ray"), "--ray", "--replicas", "2"]) == 0
    plain, on_ray = _store(tmp_path / "plain"), _store(tmp_path / "ray")
    assert any(k.endswith("p03.safetensors") for k in plain)
    assert on_ray == plain


def test_ray_generate_saves_what_a_plain_generate_saves_and_reuses_it(
    local_ray: object, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    from pvrs.engines import ray_engine
    from pvrs.extraction import driver

    base = ["extract", "--model", str(tiny_model_dir), *_inputs(tmp_path, 3), "--variants", "templated", "--threads", "1",
            "--generate", "--max-new-tokens", "4"]
    assert main([*base, "--output-dir", str(tmp_path / "plain" / "vectors")]) == 0
    assert main([*base, "--output-dir", str(tmp_path / "ray" / "vectors"), "--ray", "--replicas", "2"]) == 0
    plain, on_ray = _store(tmp_path / "plain"), _store(tmp_path / "ray")
    assert any(k.startswith("generations/") and k.endswith("p02.jsonl") for k in plain)
    assert on_ray == plain  # answers, their reuse keys and the vectors

    def no_answers(*args: object, **kwargs: object) -> object:
        raise AssertionError("saved answers must be reused")

    capsys.readouterr()
    with pytest.MonkeyPatch.context() as mp:  # Ray reuses answers, then a plain run reuses Ray's
        mp.setattr(ray_engine.Cluster, "answer", no_answers)
        mp.setattr(driver, "answer_job", no_answers)
        assert main([*base, "--output-dir", str(tmp_path / "plain" / "vectors"), "--ray", "--force"]) == 0
        assert main([*base, "--output-dir", str(tmp_path / "ray" / "vectors"), "--force"]) == 0
    assert capsys.readouterr().out.count("3 written") == 2
    assert _store(tmp_path / "ray") == plain


def test_a_persona_whose_answers_fail_is_reported_and_the_others_saved(
    local_ray: object, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    from pvrs.engines import ray_engine

    real_stream = ray_engine.Cluster.stream

    def first_answers_die_twice(self: ray_engine.Cluster, jobs: list[ray_engine.Job]) -> object:
        for done in real_stream(self, jobs):
            if done.key == 0 and jobs[0].method == "answer":
                done = ray_engine.Done(done.key, done.replica, None, ray_engine._cause(ray.exceptions.ActorDiedError()))
            yield done

    out = tmp_path / "run" / "vectors"
    argv = ["extract", "--model", str(tiny_model_dir), *_inputs(tmp_path, 2), "--variants", "templated",
            "--generate", "--max-new-tokens", "2", "--output-dir", str(out), "--ray"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ray_engine.Cluster, "stream", first_answers_die_twice)
        assert main(argv) == 1
    summary = capsys.readouterr().out
    assert "1 written, 0 skipped, 1 failed" in summary and "died 2 times" in summary
    assert sorted(p.stem for p in out.rglob("*.safetensors")) == ["p01"]
    assert sorted(p.name for p in (tmp_path / "run" / "generations").rglob("*.jsonl")) == ["p01.jsonl"]


def test_killed_replica_loses_nothing(
    local_ray: object, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    out = tmp_path / "store"
    argv = ["extract", "--model", str(tiny_model_dir), *_inputs(tmp_path, 24), "--variants", "templated",
            "--output-dir", str(out), "--ray", "--replicas", "2"]
    manifest = out / model_dir_name(str(tiny_model_dir)) / "answer_mean" / "templated" / "manifest.json"

    def kill_when_started(pids: list[int]) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if pids and manifest.exists() and len(json.loads(manifest.read_text())["personas"]) >= 2:
                os.kill(pids[0], signal.SIGKILL)
                return
            time.sleep(0.01)

    with pytest.MonkeyPatch.context() as mp:
        pids = _record_replica_pids(mp)
        killer = threading.Thread(target=kill_when_started, args=(pids,))
        killer.start()
        code = main(argv)
        killer.join()
    saved = json.loads(manifest.read_text())["personas"]
    assert pids and not _alive(pids[0]), "the replica was not killed"
    captured = capsys.readouterr()
    assert code == 0 and len(saved) == 24, captured.err
    assert "replica 0" in captured.out  # per-replica counts in the summary
    assert main(["validate", str(out), "--deep"]) == 0


def _record_replica_pids(mp: pytest.MonkeyPatch) -> list[int]:
    """The pids of every replica the run starts, filled in as its cluster starts."""
    from pvrs.engines import ray_engine

    pids: list[int] = []
    real_init = ray_engine.Cluster.__init__

    def recording_init(self: ray_engine.Cluster, *args: object) -> None:
        real_init(self, *args)
        pids.extend(self.pids)

    mp.setattr(ray_engine.Cluster, "__init__", recording_init)
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_resume_across_ray_and_plain_runs(
    local_ray: object, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    out = tmp_path / "store"
    base = ["extract", "--model", str(tiny_model_dir), *_inputs(tmp_path, 4), "--variants", "templated", "--output-dir", str(out)]
    assert main([*base, "--persona-id", "p00", "p01"]) == 0
    capsys.readouterr()
    assert main([*base, "--ray"]) == 0
    assert "2 written, 2 skipped" in capsys.readouterr().out
    assert main(base) == 0
    assert "0 written, 4 skipped" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ray", "--persona-id", "nobody"], "nobody"),
        (["--replicas", "2"], "add --ray"),
        (["--ray", "--shard", "0/2"], "drop --shard"),
        (["--ray", "--replicas", "9"], "lower --replicas"),
        (["--ray", "--gpus-per-replica", "1"], "GPU"),
        (["--ray", "--replicas", "0"], "must be at least 1"),
        (["--ray", "127.0.0.1:1"], "--ray 127.0.0.1:1: cannot connect"),
        (["--ray", "nowhere"], "is not HOST:PORT"),
    ],
)
def test_user_errors_are_one_line_before_any_work(
    local_ray: object, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],  # noqa: F811
    extra: list[str], message: str,
) -> None:
    out = tmp_path / "store"
    argv = ["extract", "--model", str(tiny_model_dir), *_inputs(tmp_path, 2), "--output-dir", str(out), *extra]
    code, last = _cli_error(argv, capsys)
    assert code == 2
    assert message in last
    assert not out.exists() or not any(out.rglob("*.safetensors"))


def test_unreachable_ray_address_env_is_one_line(
    local_ray: object, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `--ray` alone joins $RAY_ADDRESS, which Ray would retry for minutes (or, already started, ignore).
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    out = tmp_path / "store"
    assert main(["extract", "--model", str(tiny_model_dir), *_inputs(tmp_path, 2), "--output-dir", str(out), "--ray"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "RAY_ADDRESS 127.0.0.1:1: cannot connect" in err[-1] and "with RAY_ADDRESS unset" in err[-1]
    assert not out.exists() or not any(out.rglob("*.safetensors"))


def test_missing_ray_is_one_line(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    argv = ["extract", "--model", str(tiny_model_dir), *_inputs(tmp_path, 2), "--output-dir", str(tmp_path / "s"), "--ray"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
        assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("pip install 'pvrs[ray]'")
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").rglob("*.safetensors"))


def test_ctrl_c_stops_the_replicas_and_a_rerun_resumes(
    local_ray: object, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    from pvrs.extraction import results

    out = tmp_path / "store"
    argv = ["extract", "--model", str(tiny_model_dir), *_inputs(tmp_path, 6), "--variants", "templated",
            "--output-dir", str(out), "--ray", "--replicas", "2"]
    real_store_job = results._store_job
    def interrupt_on_the_third(*args: object, **kwargs: object) -> object:
        if len(list(out.rglob("*.safetensors"))) >= 2:
            raise KeyboardInterrupt
        return real_store_job(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(results, "_store_job", interrupt_on_the_third)
        pids = _record_replica_pids(mp)
        assert main(argv) == 130
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pids and not any(_alive(p) for p in pids), "replicas outlived the interrupted run"
    capsys.readouterr()
    assert main(argv) == 0
    assert "4 written, 2 skipped" in capsys.readouterr().out


def test_a_persona_that_fails_is_reported_and_the_run_exits_1(
    local_ray: object, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    from pvrs.engines import ray_engine

    real_stream = ray_engine.Cluster.stream

    def one_dies_twice(self: ray_engine.Cluster, jobs: list[ray_engine.Job], *args: object, **kwargs: object) -> object:
        for done in real_stream(self, jobs, *args, **kwargs):
            if done.key == 0:  # what `_cause` says of a job whose replica died on both tries
                done = ray_engine.Done(done.key, done.replica, None, ray_engine._cause(ray.exceptions.ActorDiedError()))
            yield done

    out = tmp_path / "store"
    argv = ["extract", "--model", str(tiny_model_dir), *_inputs(tmp_path, 3), "--variants", "templated",
            "--output-dir", str(out), "--ray"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ray_engine.Cluster, "stream", one_dies_twice)
        assert main(argv) == 1
    summary = capsys.readouterr().out
    assert "2 written, 0 skipped, 1 failed" in summary and "died 2 times" in summary
    assert sorted(p.stem for p in out.rglob("*.safetensors")) == ["p01", "p02"]


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:  # ::ffff:127.0.0.1
        address = address.ipv4_mapped
    return address.is_loopback


def test_the_local_ray_listens_on_loopback_only(local_ray: object) -> None:
    # A laptop's run opens no port to the network: not this driver, GCS, raylet, agents or workers.
    @ray.remote(num_cpus=0)
    class Probe:
        def pid(self) -> int:
            return os.getpid()

    probe = Probe.remote()  # type: ignore[attr-defined]
    worker = ray.get(probe.pid.remote())
    me = psutil.Process()
    bound: dict[str, set[str]] = {}
    for proc in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN or conn.type == socket.SOCK_DGRAM:
                    bound.setdefault(f"{proc.name()} ({proc.pid})", set()).add(conn.laddr.ip)
    ray.kill(probe)
    names = " ".join(bound)
    assert "gcs_server" in names and "raylet" in names and f"({worker})" in names, bound
    assert {name: ips for name, ips in bound.items() if not all(map(_is_loopback, ips))} == {}


def _nodes(*resources: dict[str, float]) -> object:
    """A stand-in for `ray` whose cluster has these nodes, and a dead one with 8 GPUs."""
    dead = {"Alive": False, "Resources": {"CPU": 8.0, "GPU": 8.0}}
    return SimpleNamespace(nodes=lambda: [*({"Alive": True, "Resources": r} for r in resources), dead])


def test_plan_fits_each_replica_on_one_node() -> None:
    from pvrs.engines.ray_engine import RayConfig, plan
    from pvrs.errors import InputError

    spec = ModelSpec("m")
    two_by_two = _nodes({"CPU": 4.0, "GPU": 2.0}, {"CPU": 4.0, "GPU": 2.0})
    assert plan(two_by_two, RayConfig(spec)) == (4, 1)
    assert plan(two_by_two, RayConfig(spec, gpus_per_replica=2)) == (2, 2)
    assert plan(_nodes({"CPU": 1.0, "GPU": 2.0}, {"CPU": 3.0}), RayConfig(spec)) == (1, 1)  # a CPU per replica
    assert plan(_nodes({"CPU": 3.0}, {"CPU": 2.0}), RayConfig(spec)) == (1, 0)
    assert plan(_nodes({"CPU": 3.0}, {"CPU": 2.0}), RayConfig(spec, replicas=5)) == (5, 0)
    with pytest.raises(InputError, match=r"--gpus-per-replica 4: .* at most 2 on one node.*; lower it"):
        plan(two_by_two, RayConfig(spec, gpus_per_replica=4))
    with pytest.raises(InputError, match=r"--replicas 3: the Ray cluster fits 2 replica\(s\) of 2 GPU\(s\)"):
        plan(two_by_two, RayConfig(spec, gpus_per_replica=2, replicas=3))
    with pytest.raises(InputError, match=r"--replicas 6: the Ray cluster fits 5"):
        plan(_nodes({"CPU": 3.0}, {"CPU": 2.0}), RayConfig(spec, replicas=6))


# Last: these tests stop the local Ray (a driver joins one Ray at a time).
@pytest.fixture(scope="module")
def fake_gpu_nodes() -> Iterator[object]:
    """Two nodes of two fake GPUs each, on 127.0.0.1: Ray schedules on them, nothing uses CUDA."""
    from pvrs.engines import ray_engine
    from ray.cluster_utils import Cluster

    ray.shutdown()
    node = {"num_cpus": 1, "num_gpus": 2, "node_ip_address": "127.0.0.1"}
    with ray_engine.loopback():
        cluster = Cluster(initialize_head=True, connect=False, head_node_args={**node, "include_dashboard": False})
        cluster.add_node(**node)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture
def on_fake_gpus(fake_gpu_nodes: object) -> Iterator[object]:
    from pvrs.engines import ray_engine

    ray.shutdown()
    with ray_engine.loopback():
        ray.init(address=fake_gpu_nodes.address, log_to_driver=False)  # type: ignore[attr-defined]
    yield ray
    ray.shutdown()


def test_a_replica_wider_than_any_node_is_one_line_before_any_work(
    on_fake_gpus: object, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    # 4 GPUs in the cluster, but 2 per node: Ray would wait forever for a 4-GPU node.
    out = tmp_path / "store"
    argv = ["extract", "--model", str(tiny_model_dir), *_inputs(tmp_path, 2), "--output-dir", str(out),
            "--ray", "--gpus-per-replica", "4"]
    code, last = _cli_error(argv, capsys)
    assert code == 2
    assert "--gpus-per-replica 4: the Ray cluster has 4 GPU(s), at most 2 on one node" in last
    assert not out.exists() or not any(out.rglob("*.safetensors"))


def test_replicas_ray_cannot_place_are_one_line_at_a_deadline(
    on_fake_gpus: object, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pvrs.engines import ray_engine

    @ray.remote(num_gpus=1, num_cpus=0)
    class Holder:  # other work holding a GPU: the cluster fits 2 replicas of 2 GPUs, but not now
        def ready(self) -> bool:
            return True

    holder = Holder.remote()  # type: ignore[attr-defined]
    ray.get(holder.ready.remote())
    monkeypatch.setattr(ray_engine, "PLACE_TIMEOUT_S", 1.0)  # placement can never succeed here
    out = tmp_path / "store"
    argv = ["extract", "--model", str(tiny_model_dir), *_inputs(tmp_path, 2), "--output-dir", str(out),
            "--ray", "--gpus-per-replica", "2"]
    code, last = _cli_error(argv, capsys)
    ray.kill(holder)
    assert code == 2
    assert "Ray could not place 2 replica(s) of 2 GPU(s) and 1 CPU(s) in 1 s" in last and "--replicas" in last
    assert not any(out.rglob("*.safetensors"))
    assert ray.util.placement_group_table() == {} or all(
        pg["state"] == "REMOVED" for pg in ray.util.placement_group_table().values()
    )
