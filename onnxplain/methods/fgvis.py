"""FGVis (Wagner et al., CVPR 2019): the explanation is itself an image, e = x ⊙ m + r ⊙ (1 − m), with a per-pixel,
per-channel mask m ∈ [0, 1]^{C×H×W} optimised by gradient descent, so it can be tested as a model input.

- Deletion game: minimise y_c(e) + λ‖1 − m‖₁, the smallest deletion that removes the class; stops when c is no
  longer the top-1 class of e.
- Preservation game: minimise −y_c(e) + λ‖m‖₁, the smallest kept part that holds the class score.
- Defence against adversarial evidence: the gradient is filtered at every ReLU-like op so that the mask cannot
  create or amplify activations the image lacks (`rewrite.modified.fgvis`), fed with the image's activations a⁰.
  `slack` σ loosens the bound to a⁰ + σ·max(a⁰ of the channel) (axis 1, the max over the axes after it); the
  default is 0.1. σ = 0 is the paper's rule, which starves the deletion game on deep nets: every activation the
  deletion reaches moves, about half of them upward by however little, and each of those is blocked. On
  MobileNetV2 (35 ReLU6), from chelsea, the filtered gradient's cosine to the true one falls from 1 to 0.05 within
  20 iterations, 11 % of the activations blocked while under 0.01 % of the mask is deleted, and the class does
  not flip in 500 iterations. With σ = 0.1, 1.5 % are blocked, the cosine stays at 0.33 and the class flips
  after 29 iterations (0.4 % deleted); the preservation game still keeps 24 % of the image where the unfiltered
  optimiser keeps 2.6 % (adversarial evidence), `benchmarks/fgvis.py`.

The optimiser is the reference implementation's: m₀ = 1, the gradient ∂L/∂m = ±(x − r) ⊙ ∂y_c/∂e ∓ λ normalised by
its max-abs per image, SGD step `lr`, clamp to [0, 1]. Every image of the call is one row of one batch per
iteration, through one cached session (forward and filtered backward of e); images that have stopped leave the batch.

λ, per image: `lambda_` is relative, λ = lambda_ · mean |(x − r) ⊙ ∂y_c/∂e| at e = x, so λ = 1 deletes (or drops)
first the entries whose class gradient is above average. Then λ adapts every iteration so that the explanation's
score ends comparable to the image's, not to a hand-tuned value:
- deletion: λ ← λ / ADAPT (1.05) while c is still the top-1 class of e: the deletion grows until the class flips,
  where the explanation's score has just fallen below the runner-up's;
- preservation: λ ← λ · ADAPT while y_c(e) ≥ y_c(x) (the mask may shrink further), λ ← λ / ADAPT otherwise; the
  result is the sparsest iterate (least Σm) whose score reached y_c(x).

Outputs: attributions = m (input-shaped); maps = the mean over channels of 1 − m (deletion) or m (preservation),
the fraction of each pixel deleted or kept. info per image: "explanation" e (in the model's layout), "score" y_c(e),
"flipped" (c no longer top-1 for e), "deleted_fraction" mean(1 − m) over C×H×W, "iterations" (the updates that
made m), "lambda" (λ at the end, absolute).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import perturb
from ..errors import OnnxplainError
from ..perturb import top1
from ..rewrite.graph import GRAD, TARGET, Request
from ..rewrite.modified.fgvis import FILTER, REFERENCE, filtered_tensors
from .base import Method

ADAPT = 1.05  # λ's factor per iteration
GAMES = ("deletion", "preservation")


@dataclass(frozen=True)
class FGVis(Method):
    """Wagner et al. 2019: the smallest deletion (or preservation) mask, gradients filtered against adversarial
    evidence; see the module docstring for the optimiser, λ's adaptation and the outputs."""

    name = "fgvis"
    group = "modified"
    summary = "smallest per-pixel, per-channel deletion/preservation mask, filtered gradients (Wagner 2019)"
    one_graph = False
    game: str = "deletion"
    iterations: int = 500
    lr: float = 0.1
    lambda_: float = 1.0
    filter: bool = True
    slack: float = 0.1
    reference: object = field(default="zero", compare=False)

    def model_passes(self, size):
        return self.iterations + 1

    def __post_init__(self):
        if self.game not in GAMES:
            raise OnnxplainError(f"fgvis's game must be deletion or preservation, not {self.game!r}")
        if not isinstance(self.filter, bool):
            raise OnnxplainError(f"fgvis's filter must be True or False, not {self.filter!r}")
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (self.iterations, self.lr,
                                                                                   self.lambda_, self.slack))
        if not ok or int(self.iterations) != self.iterations or self.iterations < 1 or self.lr <= 0 or \
                self.lambda_ < 0 or self.slack < 0:
            raise OnnxplainError("fgvis needs an integer iterations ≥ 1, lr > 0, lambda_ ≥ 0 and slack ≥ 0")

    def rules(self, model):
        return FILTER if self.filter else None

    def run(self, model, inputs, targets, layer, batch_size):
        r = perturb.references(inputs, model.layout, self.reference, self.name)
        delta, deletion = inputs - r, self.game == "deletion"
        names = filtered_tensors(model.proto, model.input, model.score) if self.filter else []
        y0, *a0 = model.session(Request(expose=(model.score, *names), keep_outputs=False)).run(
            [model.score, *names], {model.input: inputs}, batch_size)
        c = top1(targets, y0)
        bounds = [a + self.slack * a.max(axis=tuple(range(2, a.ndim)), keepdims=True) if self.slack else a for a in a0]
        sess = model.session(Request(expose=(model.score,), differentiate=(model.score,), wrt=(model.input,),
                                     seed="target", keep_outputs=False, rules=self.rules(model)))
        n, shape = len(inputs), (-1,) + (1,) * (inputs.ndim - 1)
        m = np.ones_like(inputs)
        kept, mass = m.copy(), np.full(n, np.inf)  # the result so far, and its Σm (preservation keeps the least)
        lam, start = np.zeros(n), np.zeros(n)
        out = {"score": np.zeros(n), "flipped": np.zeros(n, bool), "iterations": np.zeros(n, np.int64),
               "lambda": np.zeros(n)}
        active = np.arange(n)
        for t in range(int(self.iterations) + 1):
            rows = slice(None) if len(active) == n else active
            feeds = {model.input: r[rows] + delta[rows] * m[rows], TARGET: c[rows],
                     **{REFERENCE.format(k): a[rows] for k, a in zip(names, bounds)}}
            y, dy = sess.run([model.score, GRAD.format(model.input)], feeds, batch_size)
            score, flipped = y[np.arange(len(active)), c[active]], y.argmax(axis=1) != c[active]
            dm = delta[rows] * dy  # ∂y_c/∂m
            if t == 0:
                lam[active], start[active] = self.lambda_ * np.abs(dm).reshape(n, -1).mean(axis=1), score
            total = m[rows].reshape(len(active), -1).sum(axis=1)
            take = np.ones(len(active), bool) if deletion else (score >= start[active]) & (total < mass[active])
            i = active[take]
            kept[i], mass[i] = m[i], total[take]
            for key, v in (("score", score[take]), ("flipped", flipped[take]), ("iterations", t), ("lambda", lam[i])):
                out[key][i] = v
            stop = flipped if deletion else np.zeros(len(active), bool)
            if t == int(self.iterations) or stop.all():
                break
            go = active[~stop]
            grad = dm[~stop] - lam[go].reshape(shape) if deletion else lam[go].reshape(shape) - dm[~stop]
            grad /= np.maximum(np.abs(grad).reshape(len(go), -1).max(axis=1), 1e-30).reshape(shape)
            m[go] = np.clip(m[go] - self.lr * grad, 0, 1)
            holds = score[~stop] >= start[go]  # preservation: λ grows while the score holds
            lam[go] *= ADAPT ** np.where(holds & (not deletion), 1, -1)  # deletion: shrinks while c is top-1
            active = go
        maps = (1 - kept if deletion else kept).mean(axis=model.channel_axis)
        info = dict(out, explanation=r + delta * kept, deleted_fraction=(1 - kept).reshape(n, -1).mean(axis=1))
        return kept, maps, y0, c, info
