"""Black-box methods: forward passes of perturbed inputs only, so they explain any model onnxruntime can run.

Each method is its paper's equation over a `Plan` per image (see `onnxplain.perturb`): which perturbed inputs to
make, and how their scores add up. The engine streams them through one cached session in batches.

Shared parameters: score ("probability", "logit" or a function of the model's outputs, see `perturb.Scorer`),
seed, progress (a callback progress(done, total) in model calls) and checkpoint (a file where a long run saves its
sums, to stop and resume it).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from math import comb
from typing import Callable, ClassVar

import numpy as np

from ..errors import OnnxplainError
from ..perturb import (Plan, Scorer, baseline, bilinear_weights, fingerprint, segment, stream, to_chw, to_layout,
                       top1, window_sampler)
from ..detection import similarity
from ..targets import DetectionScores
from .base import Method


@dataclass(frozen=True)
class Perturbation(Method):
    """What black-box methods share: the score they explain, a seed, progress and checkpoints."""

    group = "perturbation"
    one_graph = False
    input_shaped: ClassVar[bool] = False  # attributions shaped like the input (else N×…×H×W)
    score: str | Callable = "probability"
    seed: int = 0
    checkpoint: str | None = None
    progress: Callable | None = field(default=None, compare=False, repr=False)

    def plan(self, model, x: np.ndarray, base: np.ndarray, c: int, index: int) -> Plan:
        """The perturbations of image `index` (C×H×W), whose unperturbed scores are `base`, explaining class c;
        its finish() returns (attribution, map)."""
        raise NotImplementedError

    def model_passes(self, size):
        return self.perturbations(size) + 1  # and the unperturbed image

    def perturbations(self, size: tuple[int, int]) -> int:
        """The perturbed inputs one image needs at input height and width `size`."""
        raise NotImplementedError

    def run(self, model, inputs, targets, layer, batch_size):
        images = to_chw(inputs, model.layout)
        detector = isinstance(model.head, DetectionScores)
        if self.score == "detection" and not detector:
            raise OnnxplainError(f"{self.name}: score='detection' needs a detector (see `onnxplain inspect`)")
        if detector and self.score in ("probability", "detection"):
            scorer, logits, used, base = _detections(model, images, targets, batch_size)
            columns = np.arange(len(images))  # column i of the similarity: image i's own detection
        else:
            scorer = Scorer(model, self.score)
            logits, base = scorer.reference(images, batch_size)
            used = columns = top1(targets, base)
        plans = [self.plan(model, x, base[i], int(columns[i]), i) for i, x in enumerate(images)]
        key = ""
        if self.checkpoint:
            params = [(f.name, _named(getattr(self, f.name))) for f in fields(self)
                      if f.name not in ("progress", "checkpoint")]
            key = fingerprint(model.proto.SerializeToString(), inputs, used, self.name, params)
        stream(scorer, plans, batch_size, self.progress, self.checkpoint, key)
        attributions, maps = (np.stack(a) for a in zip(*(p.finish() for p in plans)))
        if self.input_shaped:
            attributions = to_layout(attributions, model.layout)
        out = logits if not callable(self.score) else base
        return attributions.astype(np.float32), maps.astype(np.float32), out, used


def _detections(model, images: np.ndarray, targets: np.ndarray, batch_size: int):
    """A scorer of D-RISE's similarity to each image's explained detection (column i: image i's), with the head's
    scores of the images, the detections explained (anchor·C + class) and the similarities of the images."""
    decoder, size = model.head.decoder, model.input_size
    scorer = Scorer(model, lambda out: similarity(decoder.decode(out, size), wanted, classes))
    outputs = [scorer.outputs(images[a:a + batch_size]) for a in range(0, len(images), batch_size)]
    decoded = [decoder.decode(out, size) for out in outputs]  # one pass: the detections, then their similarities
    logits = np.concatenate([out[model.score] for out in outputs])
    used = top1(targets, logits)
    anchors, classes = np.divmod(used, decoder.classes)
    wanted = np.concatenate([d[0] for d in decoded])[np.arange(len(images)), anchors]
    return scorer, logits, used, np.concatenate([similarity(d, wanted, classes) for d in decoded])


def _named(value):
    """A score function by its name (its repr holds an address that changes from one process to the next)."""
    return f"{value.__module__}.{value.__qualname__}" if callable(value) else value


def _starts(n: int, window: int, stride: int) -> list[int]:
    """Window positions along one axis as Captum's Occlusion places them: every stride, the last one clipped."""
    return [i * stride for i in range(-(-(n - window) // stride) + 1)]


def _whole(n: int, window: int, stride: int) -> list[int]:
    """Positions of whole windows along one axis: every stride, and one flush with the far border."""
    return sorted(set(range(0, n - window + 1, stride)) | {n - window})


@dataclass(frozen=True)
class Occlusion(Perturbation):
    """Zeiler & Fergus 2014: a(p) = mean over windows w ∋ p of f_c(x) − f_c(x with w set to the baseline).

    Windows (all channels) start every `stride` pixels from the top-left, the last one clipped at the border, and
    a pixel averages the windows covering it: the same as Captum's Occlusion. Attributions are shaped like the
    input (equal across channels); the map is their per-pixel value.
    """

    name = "occlusion"
    summary = "score drop when a sliding window is occluded (Zeiler 2014)"
    input_shaped = True
    window: int = 16
    stride: int = 8
    baseline: str | float = "zero"

    def perturbations(self, size):
        return len(_starts(size[0], self.window, self.stride)) * len(_starts(size[1], self.window, self.stride))

    def plan(self, model, x, base, c, index):
        _, h, w = x.shape
        k = self.window
        if not 1 <= k <= min(h, w) or not 1 <= self.stride <= k:
            raise OnnxplainError(f"occlusion needs 1 ≤ stride ≤ window ≤ {min(h, w)} (the image size)")
        corners = [(i, j) for i in _starts(h, k, self.stride) for j in _starts(w, k, self.stride)]
        fill = baseline(x, self.baseline)
        state = {"sum": np.zeros((h, w)), "count": np.zeros((h, w))}

        def make(a, b):
            out = np.repeat(x[None], b - a, axis=0)
            for n, (i, j) in enumerate(corners[a:b]):
                out[n, :, i:i + k, j:j + k] = fill[:, i:i + k, j:j + k]
            return out, None

        def take(a, b, s, _):
            for (i, j), drop in zip(corners[a:b], base[c] - s[:, c]):
                state["sum"][i:i + k, j:j + k] += drop
                state["count"][i:i + k, j:j + k] += 1

        def finish():
            m = state["sum"] / state["count"]
            return np.broadcast_to(m, x.shape), m

        return Plan(len(corners), make, take, state, finish)


@dataclass(frozen=True)
class RISE(Perturbation):
    """Petsiuk et al. 2018: S_c = 1/(N·p) Σ_i f_c(x ⊙ M_i + b ⊙ (1 − M_i)) M_i.

    Masks: an s×s grid of cells kept with probability p, upsampled bilinearly to (s+1)·⌈H/s⌉ and cropped at a
    random shift in [0, ⌈H/s⌉); the same N masks (seeded) for every image, made batch by batch. Dividing by N·p
    (= N·E[M]) is the paper's normalisation. The baseline b is zero (the paper's x ⊙ M) unless set.
    """

    name = "rise"
    summary = "score-weighted sum of random smooth masks (Petsiuk 2018)"
    masks: int = 4000
    cells: int = 7
    p: float = 0.5
    baseline: str | float = "zero"

    def perturbations(self, size):
        return self.masks

    def plan(self, model, x, base, c, index):
        _, h, w = x.shape
        if not 0 < self.p <= 1 or self.masks < 1 or not 1 <= self.cells <= min(h, w):
            raise OnnxplainError(f"rise needs masks ≥ 1, 0 < p ≤ 1 and 1 ≤ cells ≤ {min(h, w)}")
        grid, shifts, up_h, up_w = _rise_masks(self.masks, self.cells, self.p, self.seed, h, w)
        fill = None if self.baseline == "zero" else baseline(x, self.baseline)
        state = {"sum": np.zeros(h * w)}

        def make(a, b):
            rows = up_h[shifts[a:b, 0, None] + np.arange(h)]          # (b-a)×H×s: the crop of each mask
            cols = up_w[shifts[a:b, 1, None] + np.arange(w)]          # (b-a)×W×s
            # (b-a)×H×W by einsum, not matmul: OpenBLAS threads the second product (≥ 2¹⁸ multiply-adds per mask)
            # and its spinning threads took 20 % of D-RISE's time at 320² from onnxruntime on two cores
            m = np.einsum("bht,bwt->bhw", np.einsum("bhs,bst->bht", rows, grid[a:b]), cols)
            out = x[None] * m[:, None] if fill is None else fill + (x - fill)[None] * m[:, None]
            return out, m

        def take(a, b, s, m):  # einsum, not BLAS: OpenBLAS threads spin after a call and slow the next batch
            state["sum"] += np.einsum("b,bp->p", s[:, c].astype(np.float32), m.reshape(b - a, -1))

        def finish():
            sal = (state["sum"] / (self.masks * self.p)).reshape(h, w)
            return sal, sal

        return Plan(self.masks, make, take, state, finish)


@dataclass(frozen=True)
class DRISE(RISE):
    """Petsiuk et al. 2021 (D-RISE): RISE's masks weighted by the similarity of the masked image's detections to
    the explained one, max over proposals of IoU × class-vector cosine × objectness (`detection.similarity`). Any
    black-box method scores a detector that way by default (score='logit': the anchor's class score instead)."""

    name = "drise"
    targets = "boxes"
    summary = "RISE of a detection: masks weighted by IoU x class cosine x objectness (Petsiuk 2021)"
    score: str | Callable = "detection"


def _rise_masks(n, s, p, seed, h, w):
    """The low-resolution grids (N×s×s), shifts (N×2) and bilinear upsampling matrices of the RISE masks."""
    rng = np.random.default_rng(seed)
    grid = (rng.random((n, s, s)) < p).astype(np.float32)
    ch, cw = -(-h // s), -(-w // s)
    shifts = np.stack([rng.integers(0, ch, n), rng.integers(0, cw, n)], axis=1)
    return grid, shifts, bilinear_weights(s, (s + 1) * ch), bilinear_weights(s, (s + 1) * cw)


@dataclass(frozen=True)
class _Superpixels(Perturbation):
    """LIME and KernelSHAP: superpixels switched on (the image) or off (the baseline) by coalitions z ∈ {0,1}^d."""

    samples: int = 1000
    segments: int = 8
    segmentation: str = "grid"
    baseline: str | float = "zero"

    def perturbations(self, size):
        return self.samples  # at most: KernelSHAP enumerates fewer coalitions when they are all it needs

    def coalitions(self, d: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(rows of z, their regression weights)."""
        raise NotImplementedError

    def fit(self, z: np.ndarray, weights: np.ndarray, y: np.ndarray, full: float) -> np.ndarray:
        raise NotImplementedError

    def plan(self, model, x, base, c, index):
        if self.samples < 1:
            raise OnnxplainError(f"{self.name} needs samples ≥ 1")
        seg = segment(x, model.preprocessing, self.segmentation, self.segments)
        d = int(seg.max()) + 1
        z, weights = self.coalitions(d, np.random.default_rng([self.seed, index]))
        fill = baseline(x, self.baseline)
        state = {"y": np.zeros(len(z))}

        def make(a, b):
            m = z[a:b][:, seg].astype(np.float32)[:, None]            # (b-a)×1×H×W
            return fill + (x - fill)[None] * m, None

        def take(a, b, s, _):
            state["y"][a:b] = s[:, c]

        def finish():
            values = self.fit(z, weights, state["y"], float(base[c]))[seg]
            return values, values

        return Plan(len(z), make, take, state, finish)


@dataclass(frozen=True)
class LIME(_Superpixels):
    """Ribeiro et al. 2016 (lime_image): z uniform in {0,1}^d (first row all ones), weights
    π(z) = √exp(−D(z, 1)²/σ²) with D the cosine distance, then the weighted ridge fit
    argmin_β Σ π (f_c(z) − β₀ − zβ)² + α‖β‖²; the map paints β on the superpixels."""

    name = "lime"
    summary = "weighted linear fit on random superpixel subsets (Ribeiro 2016)"
    kernel_width: float = 0.25
    alpha: float = 1.0

    def coalitions(self, d, rng):
        z = rng.integers(0, 2, (self.samples, d)).astype(bool)
        z[0] = True
        cosine = 1 - np.sqrt(z.sum(1) / d)                            # 1 − z·1 / (|z| |1|); 1 for z = 0
        return z, np.sqrt(np.exp(-cosine ** 2 / self.kernel_width ** 2))

    def fit(self, z, weights, y, full):
        w = weights / weights.sum()
        zm, ym = w @ z, w @ y
        zc, yc = z - zm, y - ym
        a = (zc * weights[:, None]).T @ zc + self.alpha * np.eye(z.shape[1])
        return np.linalg.solve(a, (zc * weights[:, None]).T @ yc)


@dataclass(frozen=True)
class KernelSHAP(_Superpixels):
    """Lundberg & Lee 2017: Shapley values φ of the superpixels from the weighted least squares with the Shapley
    kernel π(z) = (d−1) / (C(d,|z|)·|z|·(d−|z|)), under φ₀ = f_c(all off) and Σφ = f_c(x) − φ₀.

    Every coalition is enumerated (exact Shapley values) when 2^d − 2 ≤ samples; otherwise coalition sizes are
    drawn from the kernel's distribution over sizes, each with its complement (paired sampling), equal weights.
    """

    name = "kernelshap"
    summary = "Shapley values of superpixels by weighted regression (Lundberg 2017)"
    samples: int = 2048

    def coalitions(self, d, rng):
        empty = np.zeros((1, d), bool)
        if d == 1:
            return empty, np.ones(1)
        if 2 ** d - 2 <= self.samples:
            z = ((np.arange(1, 2 ** d - 1)[:, None] >> np.arange(d)) & 1).astype(bool)
            k = z.sum(1)
            weights = (d - 1) / (np.array([comb(d, int(i)) for i in k]) * k * (d - k))
        else:
            sizes = np.arange(1, d)
            q = (d - 1) / (sizes * (d - sizes))
            half = rng.choice(sizes, size=max(self.samples // 2, 1), p=q / q.sum())
            z = np.zeros((len(half), d), bool)
            for row, k in zip(z, half):
                row[rng.choice(d, size=k, replace=False)] = True
            z = np.concatenate([z, ~z])
            weights = np.ones(len(z))
        return np.concatenate([empty, z]), np.concatenate([[0.0], weights])

    def fit(self, z, weights, y, full):
        phi0, d = y[0], z.shape[1]
        total = full - phi0
        if d == 1:
            return np.array([total])
        z, weights, y = z[1:].astype(np.float64), weights[1:], y[1:]
        # eliminate φ_d = total − Σ_{j<d} φ_j:  y − φ₀ − z_d·total = Σ_{j<d} φ_j (z_j − z_d)
        a = (z[:, :-1] - z[:, -1:]) * np.sqrt(weights)[:, None]
        r = (y - phi0 - z[:, -1] * total) * np.sqrt(weights)
        phi = np.linalg.lstsq(a, r, rcond=None)[0]
        return np.append(phi, total - phi.sum())


def log_odds(p: np.ndarray, n: int, k: int) -> np.ndarray:
    """PDA's log₂ odds of the Laplace-corrected probability (p·N + 1)/(N + K), N = `n` and K = `k` classes."""
    q = (p * n + 1) / (n + k)
    return np.log2(q / (1 - q))


@dataclass(frozen=True)
class PDA(Perturbation):
    """Prediction Difference Analysis (Zintgraf et al. 2017), weight of evidence in bits:

    WE_c(w) = log₂ odds(c | x) − log₂ odds(c | x₋w),  p(c | x₋w) = 1/S Σ_s p(c | x with window w ← x̃_s),
    both Laplace-corrected p ← (p·N + 1)/(N + K); a pixel averages the WE of the windows containing it.
    Positive: evidence for c; negative: against. Windows are k×k (all channels) every `stride` pixels (1:
    overlapping, as the paper; otherwise the last window of a row or column sits flush with the border, and
    with stride > window the pixels no window covers get 0). x̃ is drawn from a Gaussian over patches fitted on reference images
    (`onnxplain/data/reference_patches.npz`, or `reference=` a file from `perturb.write_reference`), conditioned on the
    ring of width `ring` around the window ("conditional") or not ("marginal"). One run gives the evidence for
    every class in `classes` at once (attributions N×len(classes)×H×W; by default the target only); the map is the
    target's. The score must be a probability.
    """

    targets = "classes"
    name = "pda"
    summary = "weight of evidence for/against, windows marginalised by sampling (Zintgraf 2017)"
    window: int = 10
    samples: int = 10
    sampling: str = "conditional"
    ring: int = 2
    stride: int = 1
    classes: tuple = ()
    laplace_n: int = 100_000   # training-set size N of the Laplace correction (the authors' code: 100 000)
    reference: str | None = None

    def perturbations(self, size):
        return len(_whole(size[0], self.window, self.stride)) * len(_whole(size[1], self.window, self.stride)) * \
            self.samples

    def plan(self, model, x, base, c, index):
        _, h, w = x.shape
        k, n = self.window, self.samples
        if self.sampling not in ("conditional", "marginal"):
            raise OnnxplainError(f"pda sampling must be conditional or marginal, not {self.sampling!r}")
        if self.score == "logit" or not ((base >= 0) & (base <= 1)).all():
            raise OnnxplainError("pda's weight of evidence needs probabilities: use score='probability' or a "
                                 "function returning them")
        if not 1 <= k <= min(h, w) or n < 1 or self.stride < 1:
            raise OnnxplainError(f"pda needs 1 ≤ window ≤ {min(h, w)} (the image size), samples ≥ 1, stride ≥ 1")
        classes = [int(v) for v in np.atleast_1d(self.classes)] or [c]
        if any(not 0 <= v < len(base) for v in classes):
            raise OnnxplainError(f"pda classes must lie in 0..{len(base) - 1}")
        wanted = list(dict.fromkeys(classes + [c]))
        sampler = window_sampler(self.reference, model.preprocessing, k, self.ring, (h, w),
                                 self.sampling == "conditional")
        corners = [(i, j) for i in _whole(h, k, self.stride) for j in _whole(w, k, self.stride)]
        kk = len(base)
        full = log_odds(base[wanted], self.laplace_n, kk)
        state = {"we": np.zeros((len(wanted), h, w)), "count": np.zeros((h, w)), "partial": np.zeros(len(wanted))}

        def window_samples(wi):
            i, j = corners[wi]
            return sampler.draw(x, i, j, n, np.random.default_rng([self.seed, index, wi]))

        def make(a, b):
            out = np.repeat(x[None], b - a, axis=0)
            for wi in range(a // n, (b - 1) // n + 1):
                i, j = corners[wi]
                lo, hi = max(a, wi * n), min(b, wi * n + n)
                out[lo - a:hi - a, :, i:i + k, j:j + k] = window_samples(wi)[lo - wi * n:hi - wi * n]
            return out, None

        def take(a, b, s, _):
            p = s[:, wanted]
            for wi in range(a // n, (b - 1) // n + 1):
                lo, hi = max(a, wi * n), min(b, wi * n + n)
                state["partial"] += p[lo - a:hi - a].sum(axis=0)
                if hi == wi * n + n:                                  # the window's last sample: its evidence
                    i, j = corners[wi]
                    state["we"][:, i:i + k, j:j + k] += (full - log_odds(state["partial"] / n, self.laplace_n, kk))[:, None, None]
                    state["count"][i:i + k, j:j + k] += 1
                    state["partial"][:] = 0

        def finish():
            we = state["we"] / np.maximum(state["count"], 1)
            return we[:len(classes)], we[wanted.index(c)]

        return Plan(len(corners) * n, make, take, state, finish)
