"""The image stage on a Ray cluster (`pixsearch index ... --ray ADDRESS`), with the interface of ImageStage.

This process scans and plans as always and writes every row itself, in the batches and transactions of a local
run; only the image stage (read -> decode -> prepare -> embed, with the captions and text the pipeline's hooks take
from each photo) runs on the cluster, in one actor per node that loads the index's model once.

A batch of files takes two calls on one actor:
  read    the files read and hashed there (the actor keeps their bytes); the items come back (a few hundred bytes)
  finish  after this process has looked up which of them are photos that moved (a database question, asked here),
          the others decoded, prepared and embedded there; the results come back, in input order
Workers read the files themselves where they can: a folder mounted at the same path on every node, or object store
photos (az://, s3://), which each worker reads with the credentials in ITS OWN environment, the one its node's
`ray start` ran in (Ray does not pass this process's environment on, and no secret travels with the job). Before
any work every node says which folders it sees and lists each object store root once (one request). A node that
cannot read every source (RayOptions.reads):
  auto     gets its batches from this process: read here (photo and sidecars, the same read step), they travel to
           it through Ray's object store, and it decodes and embeds them; one warning names the node and why
  workers  stops the run before any work, in one error naming each node and what it cannot read
  driver   (every node, whatever it sees) as auto: for when the cluster is across a slow link from the photos
The read step is a plain picklable function of the item, and what it gives (ImageBytes) describes the photo without
opening any file, so it can be read on one machine and decoded on another.

Faults: an actor that dies (its node gone) loses only the calls in flight; its batches go to the other actors, and
a batch already looked up keeps its lookup and is read again there (or here, for a node that cannot read it; bytes
already in the object store go to the next actor as they are). Nothing on the cluster writes, so each batch is
written once (by this process) or not at all, and then the next run still finds its files new. A cluster that cannot
be reached, or whose Python, pixsearch, Ray or model differ from this process's, is one error before any work.
"""
from __future__ import annotations

import io
import logging
import os
import platform
import signal
import socket
import threading
from collections import deque
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ContextManager, Iterable, Iterator, Sequence

from PIL import Image

from pixsearch.ingest.stage import ImageBytes, ImageStage, Read, Sift, StageBatch, StageOptions, StageResult, Views, \
    whole_image
from pixsearch.models.base import Embedder

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'pixsearch[ray]'"
CONNECT_TIMEOUT_S = 10.0  # for the address to answer at all
WORKER_START_TIMEOUT_S = 600.0  # for every node's actor to start and load the model (a first ONNX export is slow)
IN_FLIGHT_PER_ACTOR = 2  # batches queued on each actor: one being worked on, one ready to start
MAX_ATTEMPTS = 3  # a batch whose actors keep dying (a file that crashes the decoder?) stops the run after this
READ_THREADS_HERE = 8  # this process's reads for nodes that cannot read a source: I/O (disk, downloads), not CPU


class ClusterError(RuntimeError):
    """The Ray cluster cannot do this job (not installed, unreachable, different versions, paths not visible,
    every worker gone); the message says what to fix."""


@dataclass(frozen=True)
class RayOptions:
    """Where the image stage runs. address: "auto" (RAY_ADDRESS), host:port of the head's GCS or ray://host:port.
    cache_dir: where the workers keep derived model files (ONNX exports): this machine's path, used on a node
    when it can be created there, else the node's default."""

    address: str
    cache_dir: str | None = None
    device: str = "auto"  # the device setting (models/device.py): GPUs are requested only where the cluster has them
    reads: str = "auto"  # who reads the photos (one of config.RAY_READS, checked with the settings): see above


def resolve_address(address: str) -> str:
    address = (address or "").strip()
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS", "").strip()
        if not address:
            raise ClusterError("--ray auto needs RAY_ADDRESS (host:port of the Ray head) in the environment")
    if not address:
        raise ClusterError("no Ray address given: --ray HOST:PORT, --ray auto (RAY_ADDRESS) or the setting "
                           "ray_address")
    return address


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ClusterError(f"--ray needs the ray package, which is not installed: {INSTALL_HINT}") from None
    return ray


def check_address(address: str) -> None:
    """What can be checked of a cluster address before anything else is opened: ray installed, the address given
    (or in RAY_ADDRESS) and answering. RayImageStage checks the rest."""
    import_ray()
    _check_reachable(resolve_address(address))


def open_image_stage(embedder: Embedder, options: StageOptions, ray: RayOptions | None,
                     roots: Sequence[Path]) -> ContextManager[Any]:
    """The image stage for an ingest run: here (ImageStage), or on the Ray cluster `ray` names (RayImageStage:
    connected, checked and its actors started on entry, all of it stopped on exit)."""
    if ray is None:
        return nullcontext(ImageStage(embedder, options))
    return _ray_stage(embedder, options, ray, roots)


@contextmanager
def _ray_stage(embedder: Embedder, options: StageOptions, ray: RayOptions, roots: Sequence[Path]
               ) -> Iterator["RayImageStage"]:
    stage = RayImageStage(embedder, options, ray, roots)
    try:
        yield stage
    finally:
        stage.close()


# -- the actor --------------------------------------------------------------------------------------------------------
def _node_facts(paths: Sequence[str], object_roots: Sequence[str] = ()) -> dict[str, Any]:
    import pixsearch
    import ray

    return {"node": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(),
            "python": platform.python_version(), "pixsearch": pixsearch.__version__, "ray": ray.__version__,
            "unseen": [p for p in paths if not (os.path.exists(p) and os.access(p, os.R_OK))],
            "unlisted": _unlisted(object_roots)}


def _unlisted(object_roots: Sequence[str]) -> dict[str, str]:
    """The object store roots this node cannot list with the credentials in its own environment (the one its
    `ray start` ran in), each with why; the messages name variables, never their values (sources/errors.py)."""
    if not object_roots:
        return {}
    from pixsearch.sources import SourceError, check_listing

    unlisted = {}
    for root in object_roots:
        try:
            check_listing(root)
        except SourceError as exc:
            unlisted[root] = str(exc)
    return unlisted


def _usable_cache_dir(cache_dir: str | None) -> str | None:
    if cache_dir is None:
        return None
    try:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        return cache_dir if os.access(cache_dir, os.W_OK) else None
    except OSError:
        return None


@dataclass(frozen=True)
class ActorPlan:
    """One embedding actor: the node it is pinned to, what it asks Ray for, the device setting it loads with."""

    node: str  # Ray node id
    host: str
    cpus: float
    gpus: float
    device: str

    def options(self) -> dict[str, Any]:
        """Its ray.remote(...).options(...)."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        return {"num_cpus": self.cpus, "num_gpus": self.gpus,
                "max_restarts": 0, "max_task_retries": 0,  # a dead actor's batches go to the others
                "scheduling_strategy": NodeAffinitySchedulingStrategy(self.node, soft=False)}


def plan_actors(nodes: Sequence[dict[str, Any]], device: str | None) -> list[ActorPlan]:
    """The actors for a cluster's nodes (as ray.nodes() describes them): one per node that has a CPU, holding all
    its CPUs; on a node with GPUs, when the device setting may use them (actor_gpus: not `cpu`), one per GPU,
    each with its share of the CPUs. `cuda` skips the nodes without a GPU, and is DeviceUnavailableError on a
    cluster with none."""
    from pixsearch.models.device import actor_device, actor_gpus

    alive = [n for n in nodes if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= 1]
    actor_gpus(device, sum(n["Resources"].get("GPU", 0) for n in alive))  # `cuda` on a cluster without GPUs: raises
    plans = []
    for node in alive:
        cpus, node_gpus = node["Resources"]["CPU"], int(node["Resources"].get("GPU", 0))
        gpus = actor_gpus(device, node_gpus) if node_gpus else 0.0
        if not gpus and actor_device(device, 1.0) == "cuda":
            continue  # `cuda`: this node has no GPU to run on
        actors = node_gpus if gpus else 1
        share = int(cpus // actors) or cpus / actors
        plans += [ActorPlan(node["NodeID"], node.get("NodeManagerAddress", "?"), share, gpus,
                            actor_device(device, gpus)) for _ in range(actors)]
    return plans


class StageWorker:
    """One node's share of the image stage (a Ray actor: ray.remote(StageWorker)); loads the model once, on the
    device its plan says; on a GPU it embeds as many images at once as the GPU's free memory allows."""

    def __init__(self, model: str, cache_dir: str | None, options: StageOptions, threads: int, device: str = "cpu"):
        self.error: str | None = None
        self.model_id: str | None = None
        self.images_per_batch: int | None = None
        self.held: dict[int, list[StageResult]] = {}  # batches read, bytes kept until their finish call
        try:
            from pixsearch.models import load_embedder

            embedder = load_embedder(model, _usable_cache_dir(cache_dir), threads=threads, device=device)
            self.model_id = embedder.model_id
            # None on the CPU; resolving the device here makes a `cuda` that fails on this node its error
            self.images_per_batch = getattr(embedder, "images_per_batch", lambda: None)()
            if self.images_per_batch:
                options = replace(options, batch_size=max(options.batch_size, self.images_per_batch))
            self.stage = ImageStage(embedder, options)
            self.stage.finish_batch([StageResult(None, data=ImageBytes(_gray_png()))])  # the weights loaded now
        except Exception as exc:  # noqa: BLE001 - reported by facts(): one error naming the node, before any work
            self.error = f"{type(exc).__name__}: {exc}"

    def facts(self, paths: Sequence[str], object_roots: Sequence[str] = ()) -> dict[str, Any]:
        return {**_node_facts(paths, object_roots), "model_id": self.model_id, "error": self.error,
                "images_per_batch": self.images_per_batch}

    def read(self, number: int, items: list, read: Read) -> list[StageResult]:
        results = self.stage.read_batch(items, read)
        self.held[number] = results
        return [_sent(result) for result in results]

    def finish(self, number: int, results: list[StageResult], read: Read, views: Views) -> list[StageBatch]:
        """Decode and embed the results the driver kept for decoding (data set): with the bytes sent along (the
        driver read them), with the bytes held since their read here, or read again here when another actor read
        them (and is gone)."""
        held = self.held.pop(number, None)
        if held is not None:
            for result, mine in zip(results, held):
                if isinstance(result.data, _HeldByWorker):
                    result.data = mine.data
        again = [result for result in results if isinstance(result.data, _HeldByWorker)]
        for result, reread in zip(again, self.stage.read_batch([r.item for r in again], read)):
            result.data, result.error, result.seconds = reread.data, reread.error, result.seconds + reread.seconds
        return self.stage.finish_batch(results, views)


def _gray_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), "gray").save(out, "PNG")
    return out.getvalue()


class _HeldByWorker(ImageBytes):
    """Stands for the bytes of a result read by an actor, which keeps them: the result may be decoded there."""


_HELD = _HeldByWorker(b"")


def _sent(result: StageResult) -> StageResult:
    """A read result as sent back: everything but the bytes."""
    return StageResult(result.item, result.error, seconds=result.seconds,
                       data=_HELD if result.data is not None else None)


# -- the driver side --------------------------------------------------------------------------------------------------
@dataclass
class _Batch:
    number: int
    items: list
    read_here: list[StageResult] | None = None  # read by this process (bytes and all), waiting to be sifted
    results: list[StageResult] | None = None  # read and sifted, no bytes: ready to finish
    shipped: Any = None  # when this process read them: the ObjectRef of the sifted results with their bytes
    actor: Any = None
    call: Any = None  # the ObjectRef of the call in flight
    attempts: int = 0


@dataclass
class _Worker:
    actor: Any
    node: str
    host: str
    cpus: int
    facts: dict[str, Any] = field(default_factory=dict)
    reads_here: bool = False  # this process reads its batches and sends it the bytes (it cannot read a source)
    batches: int = 0  # finished
    sent: int = 0  # finished with bytes sent from here

    @property
    def name(self) -> str:
        return f"node {self.host} ({self.node[:8]})"


class RayImageStage:
    """ImageStage's run() on a Ray cluster (see the module docstring)."""

    def __init__(self, embedder: Embedder, options: StageOptions, ray_options: RayOptions, roots: Sequence[Path]):
        if getattr(embedder, "hosted", False):
            raise ClusterError(f"{embedder.name} is a hosted model (the service embeds): --ray is for local models")
        self.embedder, self.options, self.reads = embedder, options, ray_options.reads
        # this process's reads for the nodes that cannot read a source (the pixels are never decoded here)
        self.here = ImageStage(embedder, replace(options, workers=READ_THREADS_HERE))
        self.ray = ray = import_ray()
        self.address = resolve_address(ray_options.address)
        _check_reachable(self.address)
        _join(ray, self.address)
        self.workers: list[_Worker] = []
        self._window: deque[_Batch] = deque()
        try:
            self._start_workers(ray_options)
            self._check(roots)
        except BaseException:
            self.close()
            raise

    # -- setting up ---------------------------------------------------------------------------------------------------
    def _start_workers(self, ray_options: RayOptions) -> None:
        ray = self.ray
        plans = plan_actors(ray.nodes(), ray_options.device)
        if not plans:
            raise ClusterError(f"the Ray cluster at {self.address} has no node with a CPU to run on")
        remote = ray.remote(StageWorker)
        for plan in plans:
            threads = max(1, int(plan.cpus))
            actor = remote.options(**plan.options()).remote(
                self.embedder.name, ray_options.cache_dir, replace(self.options, workers=max(2, threads)), threads,
                plan.device)
            self.workers.append(_Worker(actor, plan.node, plan.host, threads))

    def _check(self, roots: Sequence[Path]) -> None:
        """Every node's versions and model, or one error listing what differs where; what each node can read
        decides who reads its batches (see the module docstring)."""
        from pixsearch.ingest.scan import normal_path
        from pixsearch.sources import is_object_url

        ray = self.ray
        # Object store locations are read by each worker with its own environment's credentials: listed, not seen.
        paths = [normal_path(root) for root in roots if not is_object_url(root)]
        object_roots = [str(root) for root in roots if is_object_url(root)]
        calls = {w.actor.facts.remote(paths, object_roots): w for w in self.workers}
        ready, late = ray.wait(list(calls), num_returns=len(calls), timeout=WORKER_START_TIMEOUT_S)
        problems = [f"{calls[ref].name}: did not start a worker within "
                    f"{WORKER_START_TIMEOUT_S:.0f} s (are its CPUs taken by another job?)" for ref in late]
        here = _node_facts([])
        unread: dict[str, list[str]] = {}  # node name: what it cannot read
        for ref in ready:
            worker = calls[ref]
            name = worker.name
            try:
                worker.facts = facts = ray.get(ref)
            except ray.exceptions.RayError as exc:
                problems.append(f"{name}: cannot run pixsearch: {_first_line(exc)}")
                continue
            for what in ("python", "pixsearch", "ray"):
                if facts[what] != here[what]:
                    problems.append(f"{name}: {what} {facts[what]}, but {here[what]} here")
            if facts["error"]:
                problems.append(f"{name}: cannot load the model {self.embedder.name}: {facts['error']}")
            elif facts["model_id"] != self.embedder.model_id:
                problems.append(f"{name}: the model {self.embedder.name} is {facts['model_id']} there, "
                                f"{self.embedder.model_id} here")
            cannot = [f"cannot see {path} (mount it at the same path on every node)" for path in facts["unseen"]]
            cannot += [f"cannot list {root}: {why} (workers read object stores with the credentials in the "
                       "environment their node's `ray start` ran in)" for root, why in facts["unlisted"].items()]
            if cannot:
                unread[name] = cannot
                worker.reads_here = True
        if self.reads == "workers":
            problems += [f"{name}: {what}" for name, cannot in unread.items() for what in cannot]
        if problems:
            raise ClusterError(f"the Ray cluster at {self.address} cannot run this job:\n  " + "\n  ".join(problems))
        for name, cannot in unread.items():
            log.warning("Ray %s %s: this process reads the photos of its batches and sends them through Ray's "
                        "object store", name, "; ".join(cannot))
        if self.reads == "driver":
            for worker in self.workers:
                worker.reads_here = True
        on_gpus = [w.facts["images_per_batch"] for w in self.workers if w.facts.get("images_per_batch")]
        if on_gpus:  # batches that fill the smallest GPU (a CPU actor takes them as well)
            self.options = replace(self.options, batch_size=max(self.options.batch_size, min(on_gpus)))
        log.info("image stage on %d Ray nodes (%d CPUs)", len(self.workers), sum(w.cpus for w in self.workers))

    def close(self) -> None:
        """Stop this job's actors (work in flight is dropped: nothing of it was written) and leave the cluster."""
        ray = self.ray
        for worker in self.workers:
            try:
                ray.kill(worker.actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.workers = []
        if ray.is_initialized():
            ray.shutdown()

    # -- running --------------------------------------------------------------------------------------------------
    def run(self, items: Iterable[Any], read: Read, *, views: Views = whole_image,
            sift: Sift | None = None) -> Iterator[StageBatch]:
        """As ImageStage.run: the results a batch at a time, in input order; `sift` is called here, in input
        order, with each batch's items that were read."""
        ray = self.ray
        source = _batched(items, self.options.batch_size)
        self._window = window = deque()  # in input order: reading, or sifted and finishing
        self._read = read
        read_ref, views_ref = ray.put(read), ray.put(views)
        while True:
            while len(window) < IN_FLIGHT_PER_ACTOR * len(self.workers):
                batch = next(source, None)
                if batch is None:
                    break
                window.append(batch)
                self._send(batch, read_ref, views_ref)
            if not window:
                self._log_work()
                return
            unsifted = next((b for b in window if b.results is None), None)
            if unsifted is not None and unsifted.read_here is not None:  # read here: its bytes go with its finish
                results, unsifted.read_here = _sifted(unsifted.read_here, sift), None
                self._ship(unsifted, results)
                self._send(unsifted, read_ref, views_ref, again=False)
                continue
            head = window[0]
            waiting = list({id(b): b for b in (unsifted, head) if b is not None}.values())
            ready, _ = ray.wait([b.call for b in waiting], num_returns=1)
            done = next(b for b in waiting if b.call in ready)
            try:
                value = ray.get(done.call)
            except ray.exceptions.RayActorError as exc:
                self._lost(done.actor, exc, window, read_ref, views_ref)
                continue
            if done.results is None:
                done.results = _sifted(value, sift)
                self._send(done, read_ref, views_ref, again=False)
            else:
                window.popleft()
                self._count(done)
                yield from value

    def _send(self, batch: _Batch, read_ref: Any, views_ref: Any, *, again: bool = True) -> None:
        """Start the batch's next step: its read (on its actor, or here for an actor that cannot read it), or
        (once sifted) its finish; on the least busy actor when it has none yet or its actor is gone."""
        if batch.actor is None or again:
            if batch.attempts >= MAX_ATTEMPTS:
                first = getattr(batch.items[0], "file", batch.items[0])
                raise ClusterError(f"the batch starting with {getattr(first, 'path', first)} was lost with "
                                   f"{batch.attempts} workers in a row; the files not yet written are left for "
                                   "the next run")
            batch.attempts += 1
            batch.actor = self._least_busy()
        batch.call = None
        if batch.results is None:
            if batch.read_here is not None:
                return  # read here already: waiting for its sift
            if self._worker(batch.actor).reads_here:
                batch.read_here = self.here.read_batch(batch.items, self._read)
            else:
                batch.call = batch.actor.read.remote(batch.number, batch.items, read_ref)
            return
        if batch.shipped is None and self._worker(batch.actor).reads_here:
            self._read_again_here(batch)  # the actor that read it is gone, and this one cannot read it
        sent = batch.shipped if batch.shipped is not None else batch.results
        batch.call = batch.actor.finish.remote(batch.number, sent, read_ref, views_ref)

    def _ship(self, batch: _Batch, results: list[StageResult]) -> None:
        """The batch's results, read here, into Ray's object store with their bytes, to be finished by any actor."""
        batch.shipped = self.ray.put(results)
        batch.results = [_sent(result) for result in results]  # what this process keeps: no bytes

    def _read_again_here(self, batch: _Batch) -> None:
        """Read here what the batch still needs decoded (after its sift), and ship it."""
        results = [replace(result) for result in batch.results]
        wanted = [result for result in results if result.data is not None]
        for result, reread in zip(wanted, self.here.read_batch([r.item for r in wanted], self._read)):
            result.data, result.error, result.seconds = reread.data, reread.error, result.seconds + reread.seconds
        self._ship(batch, results)

    def _worker(self, actor: Any) -> _Worker:
        return next(w for w in self.workers if w.actor is actor)

    def _count(self, batch: _Batch) -> None:
        worker = self._worker(batch.actor)  # alive: its call just returned
        worker.batches += 1
        worker.sent += batch.shipped is not None

    def _log_work(self) -> None:
        """Which node did how much, and how its photos were read (the report is a local run's: it says nothing
        of the cluster)."""
        log.info("image stage on Ray: %s", "; ".join(
            f"{w.name}: {w.batches} batches, {w.sent} of them read here and sent" for w in self.workers))

    def _least_busy(self) -> Any:
        busy = {id(w.actor): 0 for w in self.workers}
        for batch in self._window:
            if batch.actor is not None and id(batch.actor) in busy:
                busy[id(batch.actor)] += 1
        return min(self.workers, key=lambda w: busy[id(w.actor)]).actor

    def _lost(self, actor: Any, exc: Exception, window: deque[_Batch], read_ref: Any, views_ref: Any) -> None:
        """An actor died: forget it and send its batches to the others (a sifted batch keeps its sift)."""
        gone = [w for w in self.workers if w.actor is actor]
        self.workers = [w for w in self.workers if w.actor is not actor]
        for worker in gone:
            log.warning("Ray worker on %s is gone (%s); its batches go to the other nodes", worker.host,
                        _first_line(exc))
        if not self.workers:
            raise ClusterError(f"every Ray worker of the cluster at {self.address} is gone ({_first_line(exc)}); "
                               "the files not yet written are left for the next run")
        for batch in window:
            if batch.actor is actor:
                self._send(batch, read_ref, views_ref)  # a batch read here keeps its bytes (read_here, shipped)


def _sifted(results: list[StageResult], sift: Sift | None) -> list[StageResult]:
    """As the local stage sifts a batch: of the items read, those `sift` turns down pass through undecoded."""
    read = [r for r in results if r.data is not None]
    if sift is not None and read:
        for result, keep in zip(read, sift([r.item for r in read])):
            if not keep:
                result.data = None
    return results


def _batched(items: Iterable[Any], size: int) -> Iterator[_Batch]:
    batch: list = []
    number = 0
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield _Batch(number, batch)
            batch, number = [], number + 1
    if batch:
        yield _Batch(number, batch)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0] if "\n" in text else text


def _check_reachable(address: str) -> None:
    """A clear error now, within CONNECT_TIMEOUT_S, for an address nothing answers at, or where what answers is not
    a Ray head or runs another Ray (ray.init would retry such an address for minutes)."""
    from pixsearch.ingest.ray_head import NotARayHead, ray_head_version

    scheme, _, target = address.rpartition("://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"Ray address {address!r} is not host:port (or ray://host:port)")
    host = host.strip("[]")
    hint = "is `ray start --head` running there? --ray, RAY_ADDRESS or the setting ray_address"
    try:
        if scheme:  # ray://: the Ray Client server, not the GCS; reachable is what can be told without joining
            socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
            return
        version = ray_head_version(host, int(port), CONNECT_TIMEOUT_S)
    except OSError as exc:
        raise ClusterError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc} ({hint})") from None
    except NotARayHead as exc:
        raise ClusterError(f"{address} is not a Ray head: {exc} (the address of the head's GCS is the --port of "
                           f"`ray start --head`, 6379 by default; {hint.split('? ')[1]})") from None
    here = import_ray().__version__
    if version != here:
        raise ClusterError(f"the Ray head at {address} runs ray {version}, this process ray {here}: the driver "
                           "and the cluster need the same Ray")


def _join(ray: Any, address: str) -> None:
    """ray.init, keeping this process's SIGTERM handler (ray.init replaces it with sys.exit, which would skip the
    CLI's clean cancel)."""
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if on_main else None
    try:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False, configure_logging=True)
    except Exception as exc:  # noqa: BLE001 - Ray's own errors (versions, not a GCS, ...) are of many kinds
        raise ClusterError(f"cannot join the Ray cluster at {address}: {_first_line(exc)}") from None
    finally:
        if on_main and previous is not None:
            signal.signal(signal.SIGTERM, previous)
