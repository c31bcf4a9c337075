"""The Ray engine: Ray Data reads the batches on a cluster's CPUs and feeds a pool of actors, each holding one copy of
the model (its sessions built once, on one GPU each where the cluster has GPUs). The local runner and this one call
the same per-batch step, on whole batches, so their results are the same. Ray is an optional extra
(`pip install onnxplain[ray]`), imported when this engine is asked for."""
from __future__ import annotations

import logging
import pickle
import socket
from typing import Callable, Iterator
from urllib.parse import urlsplit

from ..errors import OnnxplainError, first_line
from ..limits import whole

READ_CPUS = 0.5   # per reading task: Pillow's decoding; a reservation other than the actors' keeps Ray Data from
                  # fusing the reading into the actors, where it would wait for the model
REACH = 5.0       # seconds a cluster's address has to answer


def connect(address: str | None = None):
    """The `ray` module, connected: to the Ray instance this process has, else to `address` ("auto", "HOST:PORT",
    "ray://HOST:PORT", "local" for a new local instance; None: RAY_ADDRESS's cluster, else a new local instance).
    One line when Ray is not installed or the address does not answer."""
    try:
        import ray
    except ImportError:
        raise OnnxplainError("the Ray engine needs Ray: pip install 'onnxplain[ray]'") from None
    if ray.is_initialized():
        return ray
    if address not in (None, "auto", "local"):
        _reachable(address)
    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise OnnxplainError(f"cannot join the Ray cluster at {address}: {first_line(exc)}") from None
    return ray


def _reachable(address: str) -> None:
    """Refuse, within `REACH` seconds, an address where nothing answers (Ray itself retries for minutes)."""
    where = urlsplit(address if "://" in address else f"//{address}")
    try:
        host, port = where.hostname, where.port
    except ValueError:
        host = port = None
    if not host or not port:
        raise OnnxplainError(f"a Ray address is auto, local, HOST:PORT or ray://HOST:PORT, not {address!r}")
    try:
        socket.create_connection((host, port), timeout=REACH).close()
    except OSError as exc:
        raise OnnxplainError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


def run(model, jobs: list, read: Callable, step: Callable, address: str | None = None,
        actors: int | None = None) -> Iterator:
    """step(model, read(job)) for each job, in the jobs' order (connected and checked before this returns): `read`
    runs on Ray Data's tasks, `step` on a pool of `actors` actors (default: one per GPU of the cluster, else one),
    each holding one copy of `model`. A job is one whole batch (Ray Data does not regroup images, so results equal a
    local run's); jobs, the batches read and step's results travel pickled. An actor that dies is restarted and its
    batch retried: Ray Data's actor fault tolerance (restarts and retries without limit)."""
    ray = connect(address)
    import ray.data
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)  # no lines per run; a failure is raised in one

    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), resources.get("CPU", 0)
    actors = max(gpus, 1) if actors is None else whole("actors", actors)
    if gpus and actors > gpus or actors + READ_CPUS > cpus:
        raise OnnxplainError(f"{actors} actors (one {'GPU and one ' if gpus else ''}CPU each) and the reading tasks "
                             f"({READ_CPUS:g} CPU) do not fit on this Ray cluster ({cpus:g} CPUs, {gpus} GPUs); ask "
                             f"for fewer actors")
    # one block per batch: a block goes to one task or actor call whole, so blocks of several batches would
    # leave the other actors idle
    rows = ray.data.from_items([{"n": n, "job": pickle.dumps(job)} for n, job in enumerate(jobs)],
                               override_num_blocks=max(len(jobs), 1))
    rows.context.execution_options.preserve_order = True
    rows.context.enable_progress_bars = False
    done = rows.map_batches(_read, batch_size=1, fn_kwargs={"read": read}, num_cpus=READ_CPUS).map_batches(
        _Actor, batch_size=1, fn_constructor_args=(model, step), compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=1, num_gpus=1 if gpus else 0)
    return _results(done)


def _results(done) -> Iterator:
    for row in done.iter_rows():
        ok, result = pickle.loads(row["result"])
        if not ok:
            raise result
        yield result


def _read(rows: dict, read: Callable) -> dict:
    return {"n": rows["n"], "job": [_sent(read, pickle.loads(job)) for job in rows["job"]]}


class _Actor:
    """One worker of the pool: a copy of the model, whose sessions it builds on its first batch and keeps."""

    def __init__(self, model, step: Callable):
        self.model, self.step = model, step

    def __call__(self, rows: dict) -> dict:
        return {"n": rows["n"], "result": [self._step(job) for job in rows["job"]]}

    def _step(self, job: bytes) -> bytes:
        ok, read = pickle.loads(job)
        return _sent(self.step, self.model, read) if ok else job


def _sent(f: Callable, *args) -> bytes:
    """f(*args) pickled as (True, result), or the OnnxplainError it raised as (False, error): Ray would send it back
    as a traceback's text, and the run fails on it where the local run fails, when its batch's turn comes."""
    try:
        return pickle.dumps((True, f(*args)))
    except OnnxplainError as exc:
        return pickle.dumps((False, exc))
