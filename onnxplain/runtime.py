"""Run compiled graphs: one cached onnxruntime session per (model, request), CUDA when present, batched feeds."""
from __future__ import annotations

import contextlib
import functools
import glob
import io
import os
import threading
import warnings
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Hashable, Iterable, Iterator

import numpy as np
import onnx
import onnxruntime as ort

from .errors import OnnxplainError, first_line, quiet_onnxruntime
from .rewrite.graph import SUM

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
# CUDA provider options. float32 stays float32: by default onnxruntime rounds the inputs of matrix products to TF32
# (10-bit mantissa) on Ampere and newer, which moved ResNet-50's Grad-CAM by 1.9e-3 of its range from the CPU's (3.5e-6
# without). cuDNN picks convolution algorithms by its heuristics: onnxruntime's default, an exhaustive search, made
# ResNet-50's first run at a shape 596 ms instead of 88 ms, for the same speed after (H200, `benchmarks/device_check.py`).
CUDA_OPTIONS = {"use_tf32": "0", "cudnn_conv_algo_search": "HEURISTIC"}
ROW_SESSIONS = 4  # onnxruntime sessions per Session on CUDA, one per row count (see Session.run)
# Graph optimisations: all of onnxruntime's; the device check also runs without them, to measure how far two valid
# float32 evaluations of the same graph drift apart.
OPTIMIZATION = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
# Each run hands the CPU memory its arena grew for that run back: a session otherwise keeps its largest run's memory
# for as long as it is cached. MobileNetV2, 4 methods' sessions at batch 8: 2.7 GB held, 0.9 GB with this; runs at
# batch 16 were no slower (best of 6: 0.25 s plain, 0.98 s saliency, against 0.35 and 1.40 s without).
RUN_OPTIONS = ort.RunOptions()
RUN_OPTIONS.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")


@functools.cache
def cuda_libraries() -> None:
    """Load, once, the CUDA and cuDNN libraries of pip's nvidia packages (`pip install onnxruntime-gpu[cuda,cudnn]`,
    or torch's) before the first CUDA session: onnxruntime's CUDA provider does not look there by itself. Where they
    are missing nothing is said here: the session then does not start on CUDA, and that is reported."""
    preload = getattr(ort, "preload_dlls", None)  # onnxruntime ≥ 1.21
    if preload is None:
        return
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            preload()
        except Exception:  # noqa: BLE001 (a preload that fails leaves the libraries to the system's search path)
            pass


@functools.cache
def gpu_visible() -> bool:
    """Whether this machine shows the process an NVIDIA GPU (without initialising CUDA, which would break CUDA in
    forked children): CUDA_VISIBLE_DEVICES not emptied, and a GPU device node (Linux: /dev/nvidiaN, or WSL2's
    /dev/dxg) or the driver (Windows)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "x").strip() in ("", "-1"):
        return False
    if os.name == "nt":
        import ctypes.util
        return ctypes.util.find_library("nvcuda") is not None
    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/dev/dxg")


class Session:
    """An onnxruntime session on the requested device, run in batches along axis 0 of every feed."""

    def __init__(self, proto: onnx.ModelProto, device: str = "auto", max_batch: int | None = None,
                 fixed_rows: bool | None = None):
        data = proto.SerializeToString()
        options = ort.SessionOptions()
        options.graph_optimization_level = OPTIMIZATION
        options.log_severity_level = 4  # failures are raised, and reported in one line, not logged too
        self.session = None
        if (device == "cuda" or device == "auto" and gpu_visible()) and CUDA in ort.get_available_providers():
            cuda_libraries()
            providers = [(CUDA, dict(CUDA_OPTIONS)), CPU]
            with quiet_onnxruntime():  # a failed CUDA start is reported below in one line, not ORT's five
                self.session = self._create(data, options, providers)
            fell_back = self.session is None or self.session.get_providers()[0] != CUDA
            if fell_back and device == "cuda":
                self.session = None
            if fell_back and device == "auto":  # a GPU is there: ORT's CPU fallback session is kept, with a warning
                warnings.warn("onnxplain: the CUDA provider could not start on this machine's GPU (CUDA or cuDNN "
                              "libraries missing?); running on the CPU", stacklevel=3)
        if self.session is None and device == "cuda":
            raise OnnxplainError("device 'cuda' was asked for but onnxruntime's CUDA provider is not usable here "
                                 f"(available: {', '.join(ort.get_available_providers())}); use --device cpu")
        if self.session is None:
            providers = [CPU]
            self.session = self._create(data, options, providers)
            if self.session is None:
                raise OnnxplainError(f"onnxruntime cannot run the rewritten graph: {self._error}")
        self.device = "cuda" if self.session.get_providers()[0] == CUDA else "cpu"
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.max_batch = max_batch  # rows per run at most, whatever the caller's batch size
        self.fixed_rows = self.device == "cuda" if fixed_rows is None else fixed_rows
        self._remake = (data, options, providers) if self.fixed_rows else None
        self._by_rows: OrderedDict[int, ort.InferenceSession] = OrderedDict()
        self._rows_lock = threading.Lock()

    def _create(self, data: bytes, options, providers):
        try:
            return ort.InferenceSession(data, options, providers=providers)
        except Exception as exc:  # reported by the caller, which knows what was asked for
            self._error = first_line(exc)
            return None

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray], batch_size: int | None = None,
            whole: tuple[str, ...] = ()) -> list[np.ndarray]:
        """Run `outputs` for `feeds`, every feed batched along axis 0, `batch_size` rows at a time, except those named
        in `whole`, fed whole to every run.

        With fixed rows (on CUDA), each onnxruntime session only ever sees one row count: a chunk of m rows is padded
        (its last row repeated) to the smallest of 1, 2, 4, … and the batch size that holds it, and run by that count's
        session. onnxruntime's CUDA convolutions are set up for the last input shape they saw: on an H200, ResNet-50's
        forward took 2.4 ms at batch 1 and 8.2 ms at 16 in runs of one shape, and 93 ms each when the two alternated."""
        n = max(len(v) for k, v in feeds.items() if k not in whole)
        step = min(batch_size or n, self.max_batch or n)
        top = min(batch_size or n, self.max_batch or batch_size or n)  # the batch size, even above n
        parts = []
        for start in range(0, n, step):
            m = min(step, n - start)
            rows = ladder(m, top) if self.fixed_rows else m
            chunk = {k: v if k in whole else padded(v[start:start + step], rows) for k, v in feeds.items()}
            out = self._on_rows(rows, "run", outputs, chunk)
            parts.append([o[:m] for o in out] if rows > m else out)
        if len(parts) == 1:
            return parts[0]
        return [np.concatenate(col) for col in zip(*parts)]

    def _session_for(self, rows: int) -> ort.InferenceSession:
        """The onnxruntime session that runs chunks of `rows` rows: the one session, or with fixed rows one per count
        (the first made at start), the ROW_SESSIONS most recently used kept."""
        if not self.fixed_rows:
            return self.session
        with self._rows_lock:
            if rows not in self._by_rows:
                if not self._by_rows:
                    self._by_rows[rows] = self.session
                else:
                    made = self._create(*self._remake)
                    if made is None:
                        raise OnnxplainError(f"onnxruntime cannot run the rewritten graph: {self._error}")
                    self._by_rows[rows] = made
                while len(self._by_rows) > ROW_SESSIONS:
                    self._by_rows.popitem(last=False)
            self._by_rows.move_to_end(rows)
            return self._by_rows[rows]

    def _on_rows(self, rows: int, call: str, *args):
        """onnxruntime's `call` (run, run_with_ort_values) of the session of `rows` rows; its failure in one line."""
        try:
            return getattr(self._session_for(rows), call)(*args, RUN_OPTIONS)
        except OnnxplainError:
            raise
        except Exception as exc:
            raise OnnxplainError(f"onnxruntime failed to run the model: {first_line(exc)}") from None

    def run_resident(self, outputs: list[str], feeds: dict, keep: tuple[str, ...] = (),
                     rows: int | None = None, whole: tuple[str, ...] = ()) -> list:
        """One run on OrtValues: a feed is an array, or a value that an earlier run kept on the device (fed without
        a copy); the outputs named in `keep` stay where onnxruntime made them, on the device, as OrtValues (to feed
        a later run), the others come back as arrays. (`session.io_binding()` cannot bind the overridable `target`
        input that the rewritten graphs have; OrtValue runs can.) With fixed rows (CUDA) the array feeds are padded
        as `run` pads them, to the ladder's count below `rows` (the caller's chunk size): a kept output then has
        those padded rows after its own. Feeds named in `whole` are not rows: neither counted nor padded. With
        RESIDENT off, or more rows than the session takes at once (`max_batch`), it is the plain run: the same
        kernels, the same results."""
        m = max(v.shape()[0] if isinstance(v, ort.OrtValue) else len(v) for k, v in feeds.items() if k not in whole)
        if not RESIDENT or (self.max_batch or m) < m:  # a model run one image at a time: in `run`'s chunks
            return self.run(outputs, {k: v.numpy() if isinstance(v, ort.OrtValue) else v for k, v in feeds.items()},
                            rows, whole)
        count = ladder(m, max(rows or m, m)) if self.fixed_rows else m
        values = {k: v if isinstance(v, ort.OrtValue) else ort.OrtValue.ortvalue_from_numpy(
            np.ascontiguousarray(v if k in whole else padded(v, count))) for k, v in feeds.items()}
        got = self._on_rows(count, "run_with_ort_values", outputs, values)
        return [v if name in keep else v.numpy()[:m] for name, v in zip(outputs, got)]


def padded(v: np.ndarray, rows: int) -> np.ndarray:
    """`v` with its last row repeated up to `rows` rows (`v` itself when it has them)."""
    return v if len(v) >= rows else np.concatenate([v, np.repeat(v[-1:], rows - len(v), axis=0)])


def ladder(m: int, step: int) -> int:
    """The row count a chunk of m rows (of chunks of `step`) runs at: the smallest of 1, 2, 4, … and `step` ≥ m, so at
    most log2(step) + 2 counts and less than twice the work."""
    return min(1 << (m - 1).bit_length(), step)


RESIDENT = True  # False: `Session.run_resident` is a plain run (for comparisons; the results are the same)


class Sums:
    """Running sums per image of weighted powers of row results, Σ_r w_r · part_r^p over the rows r of each image,
    in float64. A session whose graph adds them (`Request.sums`, `rewrite.graph.summed`) takes each chunk's rows
    with the chunk's `feeds` and returns the new sums, kept on its device (`step`); rows that a method gives as
    arrays are added on the host (`add`)."""

    def __init__(self, n: int, shape: tuple[int, ...], powers: tuple[int, ...]):
        self.shape, self.powers = tuple(shape), tuple(powers)
        self.names = [SUM.format(p) for p in self.powers]
        self.totals = [np.zeros((n, int(np.prod(shape))), np.float64) for _ in self.powers]

    @staticmethod
    def selection(rows: np.ndarray, weights: np.ndarray, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
        """The distinct images of a chunk's rows (u × 1) and the u × len(rows) matrix weighing each row into its
        image's sum."""
        images, which = np.unique(np.asarray(rows, np.int64), return_inverse=True)
        select = np.zeros((len(images), len(which)), dtype)
        select[which, np.arange(len(which))] = weights
        return images.reshape(-1, 1), select

    def step(self, session: Session, feeds: dict, rows: np.ndarray, weights: np.ndarray, size: int) -> None:
        """Run `session` (a summed graph) on one chunk's row `feeds`, row r weighted by weights[r] into the sums of
        image rows[r]; `size`: the chunk size (see `Session.run_resident`)."""
        images, select = self.selection(rows, weights)
        whole = dict(zip(self.names, self.totals), images=images, select=select)
        outputs = [f"{name}_out" for name in self.names]
        self.totals = session.run_resident(outputs, {**feeds, **whole}, keep=tuple(outputs), rows=size,
                                           whole=tuple(whole))

    def add(self, rows: np.ndarray, weights: np.ndarray, part: np.ndarray) -> None:
        """Add the array `part` (len(rows) × shape) on the host, row r weighted by weights[r] into image rows[r]."""
        images, select = self.selection(rows, weights, np.float64)
        flat = part.reshape(len(part), -1).astype(np.float64)
        for total, p in zip(self.totals, self.powers):
            total[images[:, 0]] += select @ flat ** p

    def result(self) -> list[np.ndarray]:
        return [(t.numpy() if isinstance(t, ort.OrtValue) else t).reshape(-1, *self.shape) for t in self.totals]


class SessionCache:
    """Sessions by key (a Request), the `size` most recently used kept; a Model also keeps its graphs and layers
    per input size in one. Safe to share between threads: a key's session is built once however many threads ask
    for it at the same time (the others wait for it), and sessions of other keys are built meanwhile."""

    def __init__(self, size: int = 16):
        self.size = size
        self._lock = threading.Lock()
        self._sessions: OrderedDict[Hashable, Session] = OrderedDict()
        self._building: dict[Hashable, threading.Lock] = {}

    def get(self, key: Hashable, make: Callable[[], Session]) -> Session:
        """The session of `key`, made by `make()` if it is not cached."""
        with self._lock:
            if key in self._sessions:
                self._sessions.move_to_end(key)
                return self._sessions[key]
            building = self._building.setdefault(key, threading.Lock())
        with building:
            with self._lock:
                if key in self._sessions:  # built by the thread this one waited for
                    self._sessions.move_to_end(key)
                    return self._sessions[key]
            try:
                session = make()
            except BaseException:
                with self._lock:
                    self._building.pop(key, None)
                raise
            with self._lock:
                self._sessions[key] = session
                self._building.pop(key, None)
                while len(self._sessions) > self.size:
                    self._sessions.popitem(last=False)
            return session

    def __reduce__(self):
        """A copy sent to another process (a Ray worker) starts empty: sessions are built where they run."""
        return SessionCache, (self.size,)

    def values(self) -> list:
        """The cached values, least recently used first (a copy)."""
        with self._lock:
            return list(self._sessions.values())

    def keys(self) -> list[Hashable]:
        """The cached keys, least recently used first (a copy: other threads may add and evict meanwhile)."""
        with self._lock:
            return list(self._sessions)


PREFETCH = True  # False: `prefetched` makes each item when it is asked for (for comparisons)


def prefetched(make: Callable, jobs: Iterable, ahead: int = 1, workers: int = 1, threads: bool = True) -> Iterator:
    """make(job) for each job, in order, made on `workers` threads up to `ahead` jobs before the consumer asks for
    them: a batch is decoded or perturbed while onnxruntime runs the previous one. At most `ahead` + 1 results are
    alive at a time (the one the consumer holds, and those made ahead); closing the iterator early cancels the rest.
    threads=False (e.g. for a single job, where nothing could overlap): each made in the caller's thread.
    """
    jobs = iter(jobs)
    if not PREFETCH or not threads:
        yield from map(make, jobs)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = deque(pool.submit(make, job) for _, job in zip(range(ahead), jobs))
        try:
            while pending:
                result = pending.popleft().result()
                pending.extend(pool.submit(make, job) for _, job in zip(range(1), jobs))
                yield result
        finally:
            for future in pending:
                future.cancel()
