"""The black-box engine: perturbed inputs made batch by batch and streamed through one cached session.

A method describes the perturbations of one image as a `Plan`: how many inputs, how to make inputs [a, b) from
their index alone (so that runs are reproducible with a seed and can stop and resume anywhere), and how to fold
their scores into running sums. `stream` cuts the plans of all images into full batches, makes the next batch on a
worker thread while onnxruntime runs the current one, and never holds more than two batches of perturbed inputs.

Images are handled as C×H×W here whatever the model's layout; the `Scorer` hands them to the model in its own.
The helpers below (baselines, blur, bilinear weights, grid segments, the Gaussian patch model PDA samples from)
are shared by the methods in `methods/perturbation.py` and the metrics in `metrics.py`.
"""
from __future__ import annotations

import hashlib
import os
import time
from contextlib import closing
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import OnnxplainError, writing
from .rewrite.graph import Request
from .runtime import prefetched

SCORES = ("probability", "logit")
REFERENCE = Path(__file__).resolve().parent / "data" / "reference_patches.npz"
CHECKPOINT_SECONDS = 30.0  # a long run saves its sums this often (and whenever it is interrupted)


# -- model calls -----------------------------------------------------------------------------------------------------
class Scorer:
    """Batches of C×H×W inputs → N×K scores, through one cached session of the model.

    score: "probability" (softmax of the model's score tensor, or that tensor when it is already a Softmax output),
    "logit" (the score tensor itself: the logits unless the model was loaded with probabilities=True), or a
    function of the outputs: it receives {name: array} with every model output (and the score tensor) for a batch
    and returns N scores or N×K scores. This is how multi-output models and detectors are explained.
    """

    def __init__(self, model, score="probability"):
        if not callable(score) and score not in SCORES:
            raise OnnxplainError(f"score must be 'probability', 'logit' or a function of the model's outputs, "
                                 f"not {score!r}")
        keep = callable(score)  # a user function sees every output of the model
        self.model, self.score = model, score
        self.session = model.session(Request(expose=(model.score,), keep_outputs=keep))
        self.names = list(self.session.output_names)
        self.nhwc = model.layout == "NHWC"

    def outputs(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(batch.transpose(0, 2, 3, 1)) if self.nhwc else batch
        return dict(zip(self.names, self.session.run(self.names, {self.model.input: self.model.deployed(x)})))

    def scores(self, out: dict[str, np.ndarray], n: int) -> np.ndarray:
        if callable(self.score):
            s = np.asarray(self.score(out), dtype=np.float64)
            s = s.reshape(-1, 1) if s.ndim == 1 else s
            if s.ndim != 2 or len(s) != n:
                raise OnnxplainError(f"the score function returned shape {s.shape} for a batch of {n} inputs; it "
                                     f"must return N or N×K scores")
            return s
        y = out[self.model.score].astype(np.float64)
        return self.model.probabilities(y) if self.score == "probability" else y

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.scores(self.outputs(batch), len(batch))

    def reference(self, images: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(the model's score tensor N×classes, the chosen scores N×K) of the unperturbed images."""
        raw, scores = [], []
        for a in range(0, len(images), batch_size):
            out = self.outputs(images[a:a + batch_size])
            raw.append(out[self.model.score])
            scores.append(self.scores(out, len(images[a:a + batch_size])))
        return np.concatenate(raw), np.concatenate(scores)


def top1(targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Targets with -1 replaced by each image's top-scoring class; a target beyond the scores is an error."""
    targets = np.asarray(targets, np.int64)
    if (targets >= scores.shape[1]).any():
        raise OnnxplainError(f"target {int(targets.max())} is beyond the {scores.shape[1]} score(s) explained")
    return np.where(targets < 0, scores.argmax(axis=1), targets)


def to_chw(inputs: np.ndarray, layout: str) -> np.ndarray:
    return np.ascontiguousarray(inputs.transpose(0, 3, 1, 2)) if layout == "NHWC" else inputs


def to_layout(a: np.ndarray, layout: str) -> np.ndarray:
    """N×C×H×W → the model's layout (attributions shaped like the input)."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)) if layout == "NHWC" else a


# -- streaming -------------------------------------------------------------------------------------------------------
@dataclass
class Plan:
    """The perturbations of one image.

    make(a, b) -> (inputs b-a × C×H×W, extra): the perturbed inputs a..b-1, a pure function of the indices;
    take(a, b, scores, extra): folds their scores ((b-a)×K) into `state`, the arrays a checkpoint saves;
    finish() -> what the method returns for the image once every input has been scored.
    """

    total: int
    make: Callable[[int, int], tuple[np.ndarray, object]]
    take: Callable[[int, int, np.ndarray, object], None]
    state: dict[str, np.ndarray] = field(default_factory=dict)
    finish: Callable[[], object] | None = None


def stream(scorer: Scorer, plans: list[Plan], batch_size: int, progress: Callable[[int, int], object] | None = None,
           checkpoint: str | os.PathLike | None = None, key: str = "", workers: int = 1) -> None:
    """Score every perturbed input of `plans` in batches of `batch_size` (batches run across images).

    progress(done, total) is called after each batch (model calls). With `checkpoint`, the sums are saved there
    every CHECKPOINT_SECONDS and when the run is interrupted (Ctrl-C, or an exception raised by `progress`); a
    later call with the same checkpoint, model, inputs and parameters resumes where it stopped, and the file is
    removed once the run completes.
    """
    starts = np.cumsum([0] + [p.total for p in plans])
    total = int(starts[-1])
    done = _restore(checkpoint, key, plans) if checkpoint else 0
    batches = [(a, min(a + batch_size, total)) for a in range(done, total, batch_size)]

    def make(a: int, b: int):
        pieces = []
        for i, p in enumerate(plans):
            lo, hi = max(a, starts[i]) - starts[i], min(b, starts[i + 1]) - starts[i]
            if lo < hi:
                pieces.append((i, int(lo), int(hi), *p.make(int(lo), int(hi))))
        inputs = pieces[0][3] if len(pieces) == 1 else np.concatenate([q[3] for q in pieces])
        return inputs, pieces

    consistent, saved = True, time.monotonic()
    with closing(prefetched(lambda job: make(*job), batches, workers, workers)) as made:
        try:
            for (a, b), (inputs, pieces) in zip(batches, made):
                scores = scorer(inputs)
                consistent, row = False, 0
                for i, lo, hi, _, extra in pieces:
                    plans[i].take(lo, hi, scores[row:row + hi - lo], extra)
                    row += hi - lo
                consistent, done = True, b
                if checkpoint and time.monotonic() - saved > CHECKPOINT_SECONDS:
                    _save(checkpoint, key, done, plans)
                    saved = time.monotonic()
                if progress is not None:
                    progress(done, total)
        except BaseException:
            if checkpoint and consistent and done < total:
                _save(checkpoint, key, done, plans)
            raise
    if checkpoint and Path(checkpoint).exists():
        Path(checkpoint).unlink()


def fingerprint(*parts) -> str:
    """A key tying a checkpoint to its run: model bytes, inputs, targets and method parameters."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.tobytes() if isinstance(p, np.ndarray) else p if isinstance(p, bytes) else repr(p).encode())
    return h.hexdigest()


def _save(path, key: str, done: int, plans: list[Plan]) -> None:
    path = Path(path)
    arrays = {f"{i}/{k}": v for i, p in enumerate(plans) for k, v in p.state.items()}
    with writing(path, "checkpoint ") as tmp, open(tmp, "wb") as f:
        np.savez(f, __key__=np.array(key), __done__=np.array(done), **arrays)


def _restore(path, key: str, plans: list[Plan]) -> int:
    path = Path(path)
    if not path.exists():
        return 0
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["__key__"]) != key:
                raise OnnxplainError(f"checkpoint {path} belongs to another run (model, images or parameters "
                                     f"differ); delete it or give another path")
            for i, p in enumerate(plans):
                for k, v in p.state.items():
                    v[...] = data[f"{i}/{k}"]
            return int(data["__done__"])
    except OnnxplainError:
        raise
    except Exception as exc:
        raise OnnxplainError(f"checkpoint {path} is unreadable ({type(exc).__name__}); delete it to start "
                             f"over") from None


# -- image helpers ---------------------------------------------------------------------------------------------------
def gaussian_blur(x: np.ndarray, sigma: float = 5.0, size: int = 11) -> np.ndarray:
    """Gaussian blur over the last two axes, zero-padded, as in Petsiuk et al.'s code (klen 11, σ 5)."""
    r = size // 2
    k = np.exp(-0.5 * ((np.arange(size) - r) / sigma) ** 2)
    k = (k / k.sum()).astype(np.float32)
    h, w = x.shape[-2:]
    pad = np.zeros(x.shape[:-2] + (h + 2 * r, w + 2 * r), np.float32)
    pad[..., r:r + h, r:r + w] = x
    rows = sum(k[i] * pad[..., i:i + h, :] for i in range(size))
    return sum(k[i] * rows[..., i:i + w] for i in range(size)).astype(np.float32)


def baseline(x: np.ndarray, kind) -> np.ndarray:
    """What replaces removed pixels of a C×H×W image: "zero" (zero in the model's input space, the dataset mean
    colour after normalisation), "mean" (the image's mean colour), "blur" (the image blurred), or a number."""
    if isinstance(kind, (int, float)) and not isinstance(kind, bool):
        return np.full_like(x, float(kind))
    if kind in ("zero", "zeros"):
        return np.zeros_like(x)
    if kind == "mean":
        return np.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape).astype(np.float32)
    if kind == "blur":
        return gaussian_blur(x)
    raise OnnxplainError(f"baseline must be zero, mean, blur or a number, not {kind!r}")


def references(inputs: np.ndarray, layout: str, spec, who: str) -> np.ndarray:
    """The reference input x′ of every image of a batch (in the model's layout), for methods that explain a
    difference from one (IG, DeepLIFT): a `baseline` kind made from each image, or an array, one image or one per
    image."""
    if isinstance(spec, (str, int, float)):
        return to_layout(np.stack([baseline(x, spec) for x in to_chw(inputs, layout)]), layout)
    try:
        ref = np.asarray(spec, np.float32)
    except (TypeError, ValueError):
        raise OnnxplainError(f"{who}'s baseline must be zero, mean, blur, a number or an array") from None
    if ref.shape not in (inputs.shape, inputs.shape[1:]):
        raise OnnxplainError(f"{who}'s baseline has shape {ref.shape}; give one image {inputs.shape[1:]} or one "
                             f"per image {inputs.shape}")
    return np.broadcast_to(ref, inputs.shape)


def bilinear_weights(n_in: int, n_out: int) -> np.ndarray:
    """n_out×n_in matrix of bilinear upsampling (half-pixel centres, edges clamped)."""
    src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    w = np.zeros((n_out, n_in), np.float32)
    np.add.at(w, (np.arange(n_out), lo), 1 - (src - lo))
    np.add.at(w, (np.arange(n_out), hi), src - lo)
    return w


def grid_segments(h: int, w: int, n: int) -> np.ndarray:
    """H×W labels of an n×n grid of near-equal cells, numbered row by row."""
    rows = np.minimum(np.arange(h) * n // h, n - 1)
    cols = np.minimum(np.arange(w) * n // w, n - 1)
    return (rows[:, None] * n + cols[None, :]).astype(np.int64)


def segment(x: np.ndarray, preprocessing, kind: str, n: int) -> np.ndarray:
    """Superpixels of a C×H×W image: an n×n grid, or about n² SLIC segments (scikit-image, when installed)."""
    if n < 1:
        raise OnnxplainError("segments must be at least 1")
    h, w = x.shape[1:]
    if kind == "grid":
        if n > min(h, w):
            raise OnnxplainError(f"a {n}×{n} grid does not fit a {h}×{w} image")
        return grid_segments(h, w, n)
    if kind != "slic":
        raise OnnxplainError(f"segmentation must be grid or slic, not {kind!r}")
    try:
        from skimage.segmentation import slic
    except Exception:  # absent, or installed without its own dependencies
        raise OnnxplainError("segmentation 'slic' needs scikit-image (pip install scikit-image); "
                             "use segmentation='grid'") from None
    from dataclasses import replace

    from .preprocess import to_view
    view = to_view(x, replace(preprocessing, layout="NCHW"))
    labels = slic(view, n_segments=n * n, start_label=0)
    return np.unique(labels, return_inverse=True)[1].reshape(h, w).astype(np.int64)


# -- the Gaussian patch model PDA samples from ---------------------------------------------------------------------
def fit_reference(images, size: int = 32) -> dict[str, np.ndarray]:
    """Stationary second-order statistics of natural images in [0, 1] RGB: the mean colour and the
    cross-covariance acf[c1, c2, dy, dx] of pixel pairs at every offset |dy|, |dx| < size. It is the biased
    estimate (sums over the pairs inside each image divided by the pixel count), the one that keeps every patch
    covariance assembled from it positive semi-definite. From it a Gaussian over any patch up to size×size is made.

    images: uint8 H×W×3 RGB arrays or image paths (each is also used mirrored left-right).
    """
    from PIL import Image

    arrays = []
    for im in images:
        a = np.asarray(Image.open(im).convert("RGB")) if isinstance(im, (str, Path)) else np.asarray(im)
        arrays += [a.astype(np.float64) / 255.0, a[:, ::-1].astype(np.float64) / 255.0]
    mean = np.mean([a.reshape(-1, 3).mean(0) for a in arrays], axis=0)
    L = size
    sums = np.zeros((3, 3, 2 * L - 1, 2 * L - 1))
    pixels = 0
    for a in arrays:
        h, w, _ = a.shape
        fh, fw = h + L, w + L
        f = np.fft.rfft2(a - mean, s=(fh, fw), axes=(0, 1))       # zero padding: no wrap-around within |d| < L
        pixels += h * w
        for c1 in range(3):
            for c2 in range(3):  # Σ_p a_c1(p) a_c2(p + d)
                cc = np.fft.irfft2(np.conj(f[..., c1]) * f[..., c2], s=(fh, fw))
                sums[c1, c2] += np.roll(cc, (L - 1, L - 1), axis=(0, 1))[:2 * L - 1, :2 * L - 1]
    return {"mean": mean.astype(np.float32), "acf": (sums / pixels).astype(np.float32)}


def write_reference(path: str | os.PathLike = REFERENCE, images=None, size: int = 32) -> Path:
    """Regenerate the shipped statistics (`onnxplain/data/reference_patches.npz`) from the repository's bundled
    images, as the model sees them (shorter side 256, centre crop 224)."""
    from .preprocess import PRESETS, read_image
    from dataclasses import replace

    if images is None:
        folder = Path(__file__).resolve().parents[1] / "models" / "images"
        p = replace(PRESETS["imagenet"], size=(224, 224))
        images = [read_image(f, p)[0] for f in sorted(folder.glob("*.png"))]
    stats = fit_reference(images, size)
    path = Path(path)
    np.savez_compressed(path, **stats, source=np.array(
        "onnxplain.perturb.write_reference: the bundled models/images (chelsea, coffee) at 224x224, and mirrored"))
    return path


def load_reference(path: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    path = Path(path) if path else REFERENCE
    if not path.is_file():
        raise OnnxplainError(f"PDA's reference statistics {path} are missing; write them with "
                             f"onnxplain.perturb.write_reference(path, images)")
    try:
        with np.load(path, allow_pickle=False) as d:
            stats = {"mean": d["mean"].astype(np.float64), "acf": d["acf"].astype(np.float64)}
    except Exception as exc:
        raise OnnxplainError(f"cannot read reference statistics {path}: {type(exc).__name__}") from None
    if stats["mean"].shape != (3,) or stats["acf"].ndim != 4 or stats["acf"].shape[:2] != (3, 3):
        raise OnnxplainError(f"{path} does not hold reference statistics (mean (3,), acf (3,3,L,L))")
    return stats


LUMA = (0.299, 0.587, 0.114)  # Pillow's RGB → L, with which grey models' images are read


def channels_of_rgb(channels: int, order: str) -> tuple[np.ndarray, np.ndarray]:
    """(M, o): the model's channels as the affine map M·rgb + o of RGB in [0, 1], as images are read for it: grey is
    Pillow's luma, RGBA's alpha is 1 (opaque photos), BGR(A) swaps the colours."""
    if channels == 1:
        return np.array([LUMA]), np.zeros(1)
    m = np.eye(3)[[2, 1, 0] if order == "BGR" else [0, 1, 2]]
    if channels == 3:
        return m, np.zeros(3)
    return np.vstack([m, np.zeros((1, 3))]), np.array([0.0, 0.0, 0.0, 1.0])


class PatchGaussian:
    """A stationary Gaussian over image patches in the model's input space (C×P×P, flattened channel-major).

    The reference statistics are in [0, 1] RGB; the model's channels are an affine map of RGB (`channels_of_rgb`)
    and its preprocessing is affine per channel, so the mean and covariance map exactly: x = a·(M·rgb + o) + b with
    a = 255·scale/std, b = -mean/std.
    """

    def __init__(self, stats: dict, preprocessing):
        p = preprocessing
        m, o = channels_of_rgb(p.channels, p.channel_order)
        a = 255.0 * p.scale / np.asarray(p.std, np.float64) * np.ones(p.channels)
        b = -np.asarray(p.mean, np.float64) / np.asarray(p.std, np.float64) * np.ones(p.channels)
        self.mean = a * (m @ stats["mean"] + o) + b
        acf = np.einsum("ia,jb,ab...->ij...", m, m, stats["acf"])
        self.acf = a[:, None, None, None] * a[None, :, None, None] * acf
        self.low, self.high = np.minimum(b, a + b), np.maximum(b, a + b)  # the range of real pixels
        self.channels = p.channels
        self.max_size = (self.acf.shape[-1] + 1) // 2

    def covariance(self, size: int) -> np.ndarray:
        """The (C·P²)×(C·P²) covariance of a P×P patch (positive semi-definite by construction, see
        `fit_reference`; a jitter of 1e-6 of the mean variance on the diagonal makes it definite, also for RGBA's
        constant alpha)."""
        if size > self.max_size:
            raise OnnxplainError(f"window + 2·ring must be at most {self.max_size} pixels (the patch size of the "
                                 f"reference statistics), not {size}")
        yy, xx = np.divmod(np.arange(size * size), size)
        dy = yy[None, :] - yy[:, None] + self.max_size - 1
        dx = xx[None, :] - xx[:, None] + self.max_size - 1
        blocks = self.acf[:, :, dy, dx]                                   # C×C×P²×P²
        n = self.channels * size * size
        cov = blocks.transpose(0, 2, 1, 3).reshape(n, n)
        return (cov + cov.T) / 2 + np.eye(len(cov)) * 1e-6 * np.trace(cov) / len(cov)


def _cholesky(cov: np.ndarray) -> np.ndarray:
    """The Cholesky factor of cov plus the smallest diagonal jitter (none, or 1e-9 … 1e-3 of its mean variance)
    that makes the factorisation succeed."""
    scale = np.trace(cov) / len(cov)
    for jitter in (0.0, 1e-9, 1e-7, 1e-5, 1e-3):
        try:
            return np.linalg.cholesky(cov + np.eye(len(cov)) * jitter * scale)
        except np.linalg.LinAlgError:
            continue
    raise OnnxplainError("the reference statistics give no valid patch covariance; regenerate them")


class WindowSampler:
    """Samples for a k×k window (all channels) of a C×H×W image: from the Gaussian conditioned on the ring of
    width `ring` around it (Zintgraf et al.: at borders the patch stays inside the image and the window sits
    off-centre in it), or from its marginal. Samples are clipped to the range of real pixels, as in their code."""

    def __init__(self, gaussian: PatchGaussian, k: int, ring: int, size: tuple[int, int], conditional: bool):
        h, w = size
        self.k, self.h, self.w, self.c = k, h, w, gaussian.channels
        self.ring = ring if conditional else 0
        self.ph, self.pw = min(k + 2 * self.ring, h), min(k + 2 * self.ring, w)
        p = max(self.ph, self.pw)
        full = gaussian.covariance(p)
        idx = np.arange(self.c * p * p).reshape(self.c, p, p)[:, :self.ph, :self.pw].ravel()  # a ph×pw patch of it
        self.cov = full[np.ix_(idx, idx)]
        self.mu = np.repeat(gaussian.mean, self.ph * self.pw)
        self.low, self.high = gaussian.low[:, None, None], gaussian.high[:, None, None]
        self._cache = {}

    def conditional(self, dy: int, dx: int):
        """For the window at offset (dy, dx) in its ring's patch: (window indices, ring indices, the regression
        matrix B, the Cholesky factor of the conditional covariance); E[window | ring] = μ_w + (ring − μ_r) Bᵀ."""
        if (dy, dx) not in self._cache:
            inside = np.zeros((self.c, self.ph, self.pw), bool)
            inside[:, dy:dy + self.k, dx:dx + self.k] = True
            wi, ri = np.flatnonzero(inside), np.flatnonzero(~inside)
            s_ww = self.cov[np.ix_(wi, wi)]
            if len(ri):
                s_wr, s_rr = self.cov[np.ix_(wi, ri)], self.cov[np.ix_(ri, ri)]
                reg = np.linalg.solve(s_rr, s_wr.T).T                       # Σ_wr Σ_rr⁻¹
                s_ww = s_ww - reg @ s_wr.T
            else:
                reg = np.zeros((len(wi), 0))
            self._cache[dy, dx] = (wi, ri, reg, _cholesky((s_ww + s_ww.T) / 2))
        return self._cache[dy, dx]

    def draw(self, x: np.ndarray, i: int, j: int, n: int, rng: np.random.Generator) -> np.ndarray:
        """n samples (n×C×k×k) for the window whose top-left corner is (i, j)."""
        oy = min(max(i - self.ring, 0), self.h - self.ph)
        ox = min(max(j - self.ring, 0), self.w - self.pw)
        wi, ri, reg, chol = self.conditional(i - oy, j - ox)
        patch = x[:, oy:oy + self.ph, ox:ox + self.pw].ravel().astype(np.float64)
        # einsum, not BLAS: OpenBLAS threads spin after a call and take the cores from onnxruntime's next batch
        mean = self.mu[wi] + np.einsum("wr,r->w", reg, patch[ri] - self.mu[ri])
        s = mean + np.einsum("nv,wv->nw", rng.standard_normal((n, len(wi))), chol)
        return np.clip(s.reshape(n, self.c, self.k, self.k), self.low, self.high).astype(np.float32)


@lru_cache(maxsize=8)
def _sampler_cache(reference: str | None, preprocessing, k: int, ring: int, size: tuple[int, int],
                   conditional: bool) -> WindowSampler:
    return WindowSampler(PatchGaussian(load_reference(reference), preprocessing), k, ring, size, conditional)


def window_sampler(reference, preprocessing, k: int, ring: int, size, conditional: bool) -> WindowSampler:
    """The (cached) sampler for a window size on a model's inputs."""
    return _sampler_cache(str(reference) if reference else None, preprocessing, k, ring, tuple(size), conditional)

