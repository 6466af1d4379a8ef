"""The Ray engine: persona jobs spread over model replicas on a Ray cluster (`pvrs[ray]`).

Actors with a work queue, not Ray Data: a job is one persona (its samples must meet in one
`sample_means` call to be averaged, and the prefix cache is per persona), the driver must see
each result as it finishes to save it (it is the only writer to the store) and must know which
persona a dead replica held, to retry it once and then report it. Actors give all of that with
a plain `ray.wait` loop; Ray Data would add a dataset layer, its own batching of rows and a
streaming executor that hides which replica ran what, for no gain here.

Each replica is an actor that loads the model once, answers the questions of `--generate`
(the driver saves the answers, then sends the extraction jobs) and computes vectors; the driver keeps at most `IN_FLIGHT` jobs
queued per replica, so a fast replica pulls more work and results never pile up in memory.
A replica that dies is restarted by Ray (`max_restarts`) and its queued jobs are retried once
(`max_task_retries`); a second death of the same job reports the persona failed.

The replicas are placed as one placement group, a bundle per replica (its GPUs on one node),
with a deadline: Ray itself would wait forever, silently, for resources no node has free."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from pvrs.engines.models import ModelSpec
from pvrs.errors import InputError, InvalidArgumentError, ModelError, PvrsError

if TYPE_CHECKING:
    from pvrs.engines.jobs import AnswerJob, QAPair, SamplingConfig
    from pvrs.engines.transformers import EngineConfig, SampleMeans

INSTALL_HINT = "pip install 'pvrs[ray]'"
IN_FLIGHT = 2  # jobs queued per replica: one running, one ready when it ends
MAX_RESTARTS = 3  # restarts per replica before Ray gives up on it
TASK_RETRIES = 1  # a job whose replica died is run once more: "fails twice" = failed
PLACE_TIMEOUT_S = 60.0  # free resources are reserved in well under a second; this long means held
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class RayConfig:
    """Where and how wide: `address` None starts a local Ray (or joins RAY_ADDRESS), "auto"
    joins the cluster started on this machine by `ray start --head`, else that address.
    `gpus_per_replica` None: 1 when the cluster has GPUs, else 0 (CPU replicas)."""

    model: ModelSpec
    address: str | None = None
    replicas: int | None = None  # default: as many as the cluster's GPUs (CPUs: 1) allow
    gpus_per_replica: int | None = None
    cpus_per_replica: int = 1

    def __post_init__(self) -> None:
        if self.replicas is not None and self.replicas < 1:
            raise InvalidArgumentError(f"--replicas must be >= 1, got {self.replicas}")
        if self.gpus_per_replica is not None and self.gpus_per_replica < 0:
            raise InvalidArgumentError(f"--gpus-per-replica must be >= 0, got {self.gpus_per_replica}")


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise InputError(f"--ray needs Ray, which is not installed; {INSTALL_HINT}") from None
    return ray


def connect(address: str | None) -> Any:
    """Ray, started or joined; an unreachable address is one line. A Ray already initialised in
    this process (a notebook, a test) is used as it is, once a given address answers."""
    ray = import_ray()
    env = os.environ.get("RAY_ADDRESS")
    # `--ray` alone joins $RAY_ADDRESS: checked as a given address is, not retried for minutes.
    target, flag = (address, "--ray") if address else (env, "RAY_ADDRESS")
    where = target or "a local Ray"
    fix = (
        "start the cluster with `ray start --head`, or pass its address (HOST:6379 or "
        "ray://HOST:10001), or --ray alone for a local Ray" + (" (with RAY_ADDRESS unset)" if env else "")
    )
    if target not in (None, "", "auto", "local"):
        _reachable(target, flag, fix)
    if ray.is_initialized():
        return ray
    try:
        if target in (None, "", "local"):
            start_local()
        else:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"--ray {where}: cannot connect ({first}); {fix}") from None
    return ray


def start_local(num_cpus: int | None = None) -> None:
    """A new Ray for this machine alone (never one that `ray start` left running), on 127.0.0.1:
    none of its processes listens on the network, which a single machine's run never needs."""
    ray = import_ray()
    with loopback():
        ray.init(
            address="local", _node_ip_address=LOOPBACK, num_cpus=num_cpus,
            include_dashboard=False, log_to_driver=False,
        )


@contextlib.contextmanager
def loopback() -> Iterator[None]:
    """Ray keeps 127.0.0.1 as given while it starts (or joins) a Ray on it. On Linux it rewrites
    127.0.0.1 to the host's network address, for other nodes to join, and its servers then listen
    on every interface; its switch for single-machine platforms (macOS, Windows), set from
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once at import, leaves the address alone."""
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def _reachable(address: str, flag: str, fix: str) -> None:
    """Ray retries an unreachable address for minutes; a plain TCP connect says so at once."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"{flag} {address!r} is not HOST:PORT, ray://HOST:PORT or auto; {fix}")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise InputError(f"{flag} {address}: cannot connect ({exc.strerror or exc}); {fix}") from None


def plan(ray: Any, config: RayConfig) -> tuple[int, int]:
    """(replicas, gpus per replica) fitted to the cluster's live nodes, refused when they cannot
    hold them: a replica's GPUs and CPUs sit on one node, so 2 nodes x 2 GPUs hold no 4-GPU one."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    gpus = [int(r.get("GPU", 0)) for r in nodes]
    cpus = [int(r.get("CPU", 0)) // config.cpus_per_replica for r in nodes]
    per = config.gpus_per_replica if config.gpus_per_replica is not None else (1 if any(gpus) else 0)
    if per > max(gpus, default=0):
        has = f"{sum(gpus)} GPU(s), at most {max(gpus)} on one node, and a replica's GPUs must sit on one node" if any(gpus) else "no GPUs"
        raise InputError(f"--gpus-per-replica {per}: the Ray cluster has {has}; lower it, or 0 for CPU replicas")
    most = sum(min(g // per, c) if per else c for g, c in zip(gpus, cpus, strict=True))
    replicas = config.replicas if config.replicas is not None else (most if per else 1)
    if replicas > most:
        raise InputError(
            f"--replicas {replicas}: the Ray cluster fits {most} replica(s) of {_size(per, config.cpus_per_replica)} "
            f"on its {len(nodes)} node(s) (a replica sits on one node); lower --replicas"
        )
    return replicas, per


def _size(gpus: int, cpus: int) -> str:
    return f"{gpus} GPU(s) and {cpus} CPU(s)" if gpus else f"{cpus} CPU(s)"


class _Replica:
    """One model copy (an actor): loads the model once, then reduces persona jobs with the
    transformers engine. Its batch budget, lowered after CUDA out-of-memory, stays lowered."""

    def __init__(self, spec: ModelSpec, gpus: int, config: EngineConfig) -> None:
        from pvrs.engines import models

        if spec.threads is not None:
            models.set_threads(spec.threads)
        device = "cuda" if gpus else "cpu"
        self.model, self.tokenizer = models.load(
            spec.model, dtype=spec.dtype, device=device, device_map="auto" if gpus > 1 else None,
            revision=spec.revision, trust_remote_code=spec.trust_remote_code,
        )
        self.config = config
        self.dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")

    def info(self) -> tuple[int, str]:
        return os.getpid(), self.dtype

    def run(self, input_ids: list[np.ndarray], masks: list[np.ndarray], sample_ids: list[str], per_sample: bool) -> SampleMeans:
        from pvrs.engines.transformers import sample_means

        means = sample_means(self.model, input_ids, masks, self.config, sample_ids=sample_ids, per_sample=per_sample)
        self.config = replace(self.config, batch_tokens=means.batch_tokens)
        return means

    def answer(self, job: AnswerJob, sampling: SamplingConfig) -> list[QAPair]:
        """The persona's answers, as a plain `--generate` run gives them (same seeds)."""
        from pvrs.engines.generation import answer_job

        return answer_job(self.model, self.tokenizer, job, sampling)


@dataclass
class Job:
    """One persona x variant: the replica method to call (`run`: its vectors, `answer`: its
    answers), its arguments, and the driver's handle for the result."""

    key: Any
    method: str
    args: tuple[Any, ...]


@dataclass
class Done:
    key: Any
    replica: str
    value: Any  # the method's return; None when the job failed
    error: str = ""


class Cluster:
    """Replicas on Ray and the queue that feeds them. `stream` yields each job's result as it
    finishes; leaving it early (Ctrl-C, a failed write) cancels the queued work. `close` ends
    the replicas (the driver does, when the run ends), so a rerun starts from what it saved."""

    def __init__(self, config: RayConfig, engine: EngineConfig, expect_dtype: str) -> None:
        self.ray = connect(config.address)
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.replicas_n, gpus = plan(self.ray, config)
        self.group = _place(self.ray, self.replicas_n, gpus, config.cpus_per_replica)
        actor = self.ray.remote(_Replica)
        self.actors = [
            actor.options(
                num_gpus=gpus, num_cpus=config.cpus_per_replica, max_restarts=MAX_RESTARTS,
                max_task_retries=TASK_RETRIES, scheduling_strategy=PlacementGroupSchedulingStrategy(self.group, i),
            ).remote(config.model, gpus, engine)
            for i in range(self.replicas_n)
        ]
        self.names = [f"replica {i}" for i in range(self.replicas_n)]
        try:
            infos = self.ray.get([a.info.remote() for a in self.actors])
        except Exception as exc:
            self.close()
            raise ModelError(f"a Ray replica could not load model {config.model.model!r}: {_cause(exc)}") from None
        if any(dtype != expect_dtype for _, dtype in infos):
            self.close()
            raise ModelError(f"Ray replicas loaded {infos[0][1]}, the driver planned {expect_dtype}; pass --dtype")
        self.pids = [pid for pid, _ in infos]

    def stream(self, jobs: Sequence[Job]) -> Generator[Done, None, None]:
        queue = list(reversed(jobs))
        running: dict[Any, tuple[int, Job]] = {}
        load = [0] * len(self.actors)
        try:
            while queue or running:
                for i, actor in enumerate(self.actors):
                    while queue and load[i] < IN_FLIGHT:
                        job = queue.pop()
                        ref = getattr(actor, job.method).remote(*job.args)
                        running[ref] = (i, job)
                        load[i] += 1
                [ref], _ = self.ray.wait(list(running), num_returns=1)
                i, job = running.pop(ref)
                load[i] -= 1
                try:
                    value = self.ray.get(ref)
                except Exception as exc:  # a PvrsError inside the task, or the replica died twice
                    yield Done(job.key, self.names[i], None, _cause(exc))
                else:
                    yield Done(job.key, self.names[i], value)
        finally:
            for ref in running:
                self.ray.cancel(ref, force=False)

    def answer(
        self, asks: Sequence[AnswerJob], sampling: SamplingConfig, on_batch: Callable[[int], object]
    ) -> Iterator[tuple[int, list[QAPair] | str]]:
        """`extraction.driver.Answerer` on the replicas: each persona's answers as they come
        back, or why none did; the driver saves them."""
        jobs = [Job(i, "answer", (a, sampling)) for i, a in enumerate(asks)]
        with contextlib.closing(self.stream(jobs)) as results:
            for done in results:
                if done.value is not None:
                    on_batch(len(done.value))
                yield done.key, done.error if done.value is None else done.value

    def close(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)
        remove_placement_group(self.group)


def _place(ray: Any, replicas: int, gpus: int, cpus: int) -> Any:
    """The replicas' resources, reserved together (a bundle per replica, each on one node) before
    any loads the model; what Ray cannot place by the deadline (other work holds it) is one line."""
    from ray.util.placement_group import placement_group, remove_placement_group

    bundle = {"CPU": float(cpus), **({"GPU": float(gpus)} if gpus else {})}
    group = placement_group([bundle] * replicas, strategy="PACK")
    if not group.wait(timeout_seconds=PLACE_TIMEOUT_S):
        remove_placement_group(group)
        free = ray.available_resources()
        raise InputError(
            f"--ray: Ray could not place {replicas} replica(s) of {_size(gpus, cpus)} in {PLACE_TIMEOUT_S:g} s: other "
            f"work holds them (free now: {free.get('GPU', 0):g} GPU(s), {free.get('CPU', 0):g} CPU(s)); "
            "lower --replicas or --gpus-per-replica, or rerun when they are free"
        )
    return group


def _cause(exc: BaseException) -> str:
    """The user-facing line of a Ray error: the PvrsError inside a task error, else a death."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, PvrsError):
        return str(cause)
    if type(exc).__name__ in ("ActorDiedError", "RayActorError", "ActorUnavailableError"):
        return f"its Ray replica died {TASK_RETRIES + 1} times while computing it"
    first = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {first[0] if first else ''}"


def run_on_ray(
    cluster: Cluster,
    todo: Sequence[Any],
    per_sample: bool,
    saver: Any,
    console: Any,
    *,
    progress: bool,
) -> None:
    """The driver's side of a Ray run: the planned jobs (`extraction.results.Job`) go out,
    results are saved by `saver` as they come back, one bar over personas with tokens/s."""
    import time

    from pvrs.engines.jobs import PersonaOutcome
    from pvrs.progress import progress_bar

    result = saver.result
    jobs = [Job(i, "run", (job.input_ids, job.masks, job.sample_ids, per_sample)) for i, job in enumerate(todo)]
    start = time.perf_counter()
    with progress_bar(console, enabled=progress) as bar, contextlib.closing(cluster.stream(jobs)) as results:
        task = bar.add_task(f"personas on {cluster.replicas_n} replica(s)", total=len(jobs), rate="")
        for done in results:
            job = todo[done.key]
            result.replicas[done.replica] = result.replicas.get(done.replica, 0) + 1
            if done.value is None:
                result.outcomes.append(PersonaOutcome(job.persona.id, job.variant, "failed", done.error))
            else:
                result.tokens += done.value.conversation_tokens
                if not saver.save(job, done.value):
                    break
            rate = result.tokens / max(time.perf_counter() - start, 1e-9)
            bar.update(task, advance=1, rate=f"{rate:,.0f} tok/s")
