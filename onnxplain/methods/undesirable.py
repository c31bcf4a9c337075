"""Undesirable pixels (Kang, Jung & Lee, ICCV Workshops 2019): the regions that work against classifying x as c.

From the evidence e_k(w) that a region w gives class k (what removing w takes from k's score), for the target c
and its top competitors c'₁ … c'_K (the next K classes by score), all measured on one set of perturbed inputs:

    against(p) = −e_c(p)                  factors for the target class: positive where removing p raises c
    competing(p) = max_{c'} e_{c'}(p)      factors for non-target classes: positive where p supports a competitor
    union(p) = max(against(p), competing(p))

The three are in the same unit (score drop, or bits for the sampled evidence), so they compare without rescaling;
all are signed: positive is undesirable for c, negative desirable.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import OnnxplainError
from ..perturb import Plan
from .perturbation import PDA, Occlusion, Perturbation



def rivals(scores: np.ndarray, targets, k: int) -> np.ndarray:
    """N×k: the k highest-scoring classes of each image other than its target, best first."""
    order = np.argsort(-np.asarray(scores, np.float64), axis=1, kind="stable")
    return np.stack([o[o != t][:k] for o, t in zip(order, np.asarray(targets).reshape(-1))])


def shared(plans: list[Plan]) -> Plan:
    """One stream of perturbed inputs for several plans whose inputs are the same (the same windows and samples,
    each plan folding the scores of its own class): the first plan makes them, every plan takes the scores."""

    def take(a, b, s, extra):
        for p in plans:
            p.take(a, b, s, extra)

    state = {f"{i}/{k}": v for i, p in enumerate(plans) for k, v in p.state.items()}
    return Plan(plans[0].total, plans[0].make, take, state)


@dataclass(frozen=True)
class Undesirable(Perturbation):
    """Evidence per region for c and its top `competitors` classes from one set of perturbed inputs, by occlusion
    (e_k = f_k(x) − f_k(x with the window set to `baseline`), the windows of `occlusion`) or by PDA's sampling
    ("conditional" or "marginal": e_k = the weight of evidence in bits, `samples` draws per window, see `pda`).

    Attributions N×3×H×W: against, competing, union (see the module); the map is the union. `info["competitors"]`
    holds the competing classes per image.
    """

    targets = "classes"
    name = "undesirable"
    parts = ("against", "competing")  # attributions[:, 2] is their union, the map
    summary = "pixels against the target and for its competitors (Kang 2019)"
    sampling: str = "occlusion"
    competitors: int = 3
    window: int = 16
    stride: int = 8
    baseline: str | float = "zero"
    samples: int = 10
    ring: int = 2
    reference: str | None = None

    def perturbations(self, size):
        return self.evidence().perturbations(size)  # shared by the target and its competitors

    def evidence(self) -> Perturbation:
        """The method measuring the evidence of one class; its inputs are the same whatever the class."""
        if self.sampling == "occlusion":
            return Occlusion(score=self.score, window=self.window, stride=self.stride, baseline=self.baseline)
        if self.sampling in ("conditional", "marginal"):
            return PDA(score=self.score, seed=self.seed, window=self.window, stride=self.stride, samples=self.samples,
                       sampling=self.sampling, ring=self.ring, reference=self.reference)
        raise OnnxplainError(f"undesirable sampling must be occlusion, conditional or marginal, not "
                             f"{self.sampling!r}")

    def plan(self, model, x, base, c, index):
        if not 1 <= self.competitors < len(base):
            raise OnnxplainError(f"undesirable needs 1 ≤ competitors ≤ {len(base) - 1} (the other classes scored)")
        classes = [c, *rivals(base[None], [c], self.competitors)[0]]
        method = self.evidence()
        plans = [method.plan(model, x, base, k, index) for k in classes]
        plan = shared(plans)

        def finish():
            e = np.stack([p.finish()[1] for p in plans])       # (1+K)×H×W, e[0] for the target
            against, competing = -e[0], e[1:].max(axis=0)
            union = np.maximum(against, competing)
            return np.stack([against, competing, union]), union

        plan.finish = finish
        return plan

    def run(self, model, inputs, targets, layer, batch_size):
        attributions, maps, scores, used = super().run(model, inputs, targets, layer, batch_size)
        return attributions, maps, scores, used, {"competitors": rivals(scores, used, self.competitors)}
