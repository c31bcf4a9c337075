"""Efficient image evidence analysis (after Zhou & Kainz 2018): PDA's weight of evidence, without PDA's
(H−k+1)(W−k+1)·S model calls. The paper's exact procedure could not be recovered; two routes give a signed
for/against map in pixel space with the meaning of PDA's WE (bits, positive = evidence for c):

- "evidence" (route b, first order, group "gradients"): with L(x) = log₂ odds of the Laplace-corrected p(c|x),
  WE_w = L(x) − L(x₋w) ≈ ∇ₓL · (x − E[x̃_w]) summed over the window (all channels), E[x̃_w] the mean of PDA's
  Gaussian conditioned on the window's ring. One forward, one forward + backward, then a product per window. Its
  link to Gradient×Input: with E[x̃_w] = 0 and a window of one pixel, the map is ∇ₓL ⊙ x summed over channels,
  i.e. Gradient×Input of the log-odds; PDA's windows and conditional mean make it a local, reference-corrected
  Gradient×Input.
- "evidence_hidden" (route a, group "perturbation"): PDA's marginalisation done on a hidden tensor A (`layer`, as
  for the CAM methods): the graph is split at A (`Request(cut=…)`) and only its upper part runs for each sample.
  A window of A (the pixel window scaled to A's resolution, at least 1×1, all channels) is replaced by S blocks of
  the same size taken from A at uniformly drawn positions (the marginal of the image's own features, seeded per
  image), p(c|A₋w) = mean over samples, WE as PDA; each feature pixel averages its windows' WE, and the map is
  that brought to pixels bilinearly (each feature pixel's evidence placed over its receptive-field centre).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import OnnxplainError
from ..perturb import bilinear_weights, to_chw, top1, window_sampler
from ..rewrite.graph import COTANGENT, GRAD, Request
from .base import Method
from .perturbation import _whole, log_odds


def average_windows(values: np.ndarray, corners: list[tuple[int, int]], k: int, size: tuple[int, int]) -> np.ndarray:
    """Each pixel of an H×W grid: the mean of the values of the k×k windows (top-left `corners`) containing it,
    0 where none does (summed-area tables, so the cost does not grow with k)."""
    h, w = size
    at, count = np.zeros((h, w)), np.zeros((h, w))
    rows, cols = np.array(corners).T
    np.add.at(at, (rows, cols), values)
    np.add.at(count, (rows, cols), 1)

    def box(a):  # Σ over corners (i, j) with p − k < i ≤ p, q − k < j ≤ q
        s = np.pad(a, ((k + 1, 0), (k + 1, 0))).cumsum(0).cumsum(1)
        return s[k + 1:, k + 1:] - s[1:h + 1, k + 1:] - s[k + 1:, 1:w + 1] + s[1:h + 1, 1:w + 1]

    return box(at) / np.maximum(box(count), 1)


@dataclass(frozen=True)
class _Evidence(Method):
    targets = "classes"
    window: int = 10
    stride: int = 1
    laplace_n: int = 100_000

    def __post_init__(self):
        if self.window < 1 or self.stride < 1 or self.laplace_n < 1 or getattr(self, "samples", 1) < 1:
            raise OnnxplainError(f"{self.name} needs window, stride, laplace_n and samples ≥ 1")

    def check(self, size: tuple[int, int]) -> None:
        if self.window > min(size):
            raise OnnxplainError(f"{self.name}'s window must fit the image: at most {min(size)}, not {self.window}")


@dataclass(frozen=True)
class Evidence(_Evidence):
    """First-order weight of evidence (route b): WE_w = Σ_{p ∈ w} ∇ₓL(x)_p · (x_p − E[x̃_w | ring]_p), a pixel
    averaging the windows containing it as PDA does. The conditional mean is that of PDA's sampler (the same
    reference statistics and ring), unclipped. Exact when L is linear in x (e.g. two classes, linear logits, no
    Laplace correction): then it is the evidence of filling each window with its conditional mean."""

    name = "evidence"
    group = "gradients"
    summary = "first-order PDA weight of evidence: grad of log-odds x (x - E[window|ring]) (Zhou 2018, route b)"
    one_graph = False
    ring: int = 2
    reference: str | None = None

    def run(self, model, inputs, targets, layer, batch_size):
        from ..explain import forward  # explain imports the methods
        images = to_chw(inputs, model.layout)
        n, _, h, w = images.shape
        self.check((h, w))
        y = forward(model, inputs, batch_size).astype(np.float64)
        p = model.probabilities(y)
        used = top1(targets, p)
        rows, kk, big = np.arange(n), p.shape[1], self.laplace_n
        pc = p[rows, used]
        q = (pc * big + 1) / (big + kk)
        dl_dp = big / (big + kk) / (q * (1 - q) * np.log(2))           # dL/dp_c
        onehot = np.eye(kk)[used]
        dp_dy = onehot if model.softmax_output and model.score == model.output else pc[:, None] * (onehot - p)
        session = model.session(Request(expose=(model.score,), differentiate=(model.score,), wrt=(model.input,)))
        grad, = session.run([GRAD.format(model.input)], {
            model.input: inputs, COTANGENT.format(model.score): (dl_dp[:, None] * dp_dy).astype(np.float32)},
            batch_size)
        grads = to_chw(grad, model.layout).astype(np.float64)
        sampler = window_sampler(self.reference, model.preprocessing, self.window, self.ring, (h, w), True)
        corners = [(i, j) for i in _whole(h, self.window, self.stride) for j in _whole(w, self.window, self.stride)]
        maps = np.stack([average_windows(self.first_order(sampler, x, g, corners), corners, self.window, (h, w))
                         for x, g in zip(images.astype(np.float64), grads)])
        return maps[:, None].astype(np.float32), maps.astype(np.float32), y.astype(np.float32), used

    def first_order(self, sampler, x, g, corners, chunk=4096):
        """∇L · (x − E[x̃_w | ring]) over each window, windows grouped by their place in the ring's patch."""
        ph, pw, ring = sampler.ph, sampler.pw, sampler.ring
        _, h, w = x.shape
        origin = np.array([[min(max(i - ring, 0), h - ph), min(max(j - ring, 0), w - pw)] for i, j in corners])
        offset = np.array(corners) - origin
        patches = np.lib.stride_tricks.sliding_window_view(x, (ph, pw), axis=(1, 2))    # 3×(h−ph+1)×(w−pw+1)×ph×pw
        gradients = np.lib.stride_tricks.sliding_window_view(g, (ph, pw), axis=(1, 2))
        out = np.zeros(len(corners))
        for dy, dx in {tuple(o) for o in offset}:
            wi, ri, reg, _ = sampler.conditional(dy, dx)
            chosen = np.flatnonzero((offset == (dy, dx)).all(axis=1))
            for a in range(0, len(chosen), chunk):
                at = chosen[a:a + chunk]
                oy, ox = origin[at].T
                xs = patches[:, oy, ox].transpose(1, 0, 2, 3).reshape(len(at), -1)      # windows × 3·ph·pw
                gs = gradients[:, oy, ox].transpose(1, 0, 2, 3).reshape(len(at), -1)
                mean = sampler.mu[wi] + (xs[:, ri] - sampler.mu[ri]) @ reg.T
                out[at] = np.einsum("nv,nv->n", gs[:, wi], xs[:, wi] - mean)
        return out


@dataclass(frozen=True)
class HiddenEvidence(_Evidence):
    """Weight of evidence of windows of a hidden tensor (route a), marginalised by S samples of the image's own
    features and scored by the upper part of the graph only; bilinearly brought to pixels. Attributions are the
    evidence at the layer (N×h×w)."""

    name = "evidence_hidden"
    group = "perturbation"
    summary = "PDA weight of evidence of hidden feature windows, upper graph only (Zhou 2018, route a)"
    at_layer = True
    uses_gradient = False
    one_graph = False
    samples: int = 10
    seed: int = 0

    def model_passes(self, size):
        return None  # windows of the layer times samples, through the graph above the layer

    def run(self, model, inputs, targets, layer, batch_size):
        h, w = to_chw(inputs, model.layout).shape[2:]
        self.check((h, w))
        y, a = model.session(Request(expose=(model.score, layer), keep_outputs=False)).run(
            [model.score, layer], {model.input: inputs}, batch_size)
        y = y.astype(np.float64)
        p = model.probabilities(y)
        used = top1(targets, p)
        nhwc = model.channel_axis_of(layer) == 3
        feats = a.transpose(0, 3, 1, 2) if nhwc else a
        upper = model.session(Request(expose=(model.score,), keep_outputs=False, cut=(layer,)))
        (fh, fw), s = feats.shape[2:], self.samples
        k = min(max(1, round(self.window * fh / h)), fh, fw)
        step = max(1, round(self.stride * fh / h))
        corners = [(i, j) for i in _whole(fh, k, step) for j in _whole(fw, k, step)]
        kk = p.shape[1]
        low = np.zeros((len(feats), fh, fw))
        for index, (f, c) in enumerate(zip(feats, used)):
            rng = np.random.default_rng([self.seed, index])
            where = np.stack([rng.integers(0, fh - k + 1, (len(corners), s)),
                              rng.integers(0, fw - k + 1, (len(corners), s))], axis=-1)
            prob = np.zeros(len(corners))
            per = max(1, 8 * batch_size // s)                                  # windows per chunk
            for start in range(0, len(corners), per):
                batch = np.repeat(f[None], s * len(corners[start:start + per]), axis=0)
                for r, (i, j) in enumerate(corners[start:start + per]):
                    for t, (u, v) in enumerate(where[start + r]):
                        batch[r * s + t, :, i:i + k, j:j + k] = f[:, u:u + k, v:v + k]
                out, = upper.run([model.score], {layer: batch.transpose(0, 2, 3, 1) if nhwc else batch}, batch_size)
                prob[start:start + per] = model.probabilities(out.astype(np.float64))[:, c].reshape(-1, s).mean(1)
            we = log_odds(p[index, c], self.laplace_n, kk) - log_odds(prob, self.laplace_n, kk)
            low[index] = average_windows(we, corners, k, (fh, fw))
        maps = bilinear_weights(fh, h) @ low @ bilinear_weights(fw, w).T
        return low.astype(np.float32), maps.astype(np.float32), y.astype(np.float32), used
