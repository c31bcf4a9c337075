"""Methods that read the gradient of the score with respect to the input."""
from __future__ import annotations

from dataclasses import dataclass

from .base import Method


@dataclass(frozen=True)
class Saliency(Method):
    """|∂y_c/∂x| (Simonyan et al. 2014); the map is its maximum over channels."""

    name = "saliency"
    group = "gradients"
    summary = "|dy_c/dx|, max over channels (Simonyan 2014)"

    def formula(self, g, t):
        a = g.Abs(t.dx)
        return a, g.reduce_max(a, [t.channel_axis], keepdims=False)


@dataclass(frozen=True)
class GradientXInput(Method):
    """x ⊙ ∂y_c/∂x (Shrikumar et al. 2016); the map is its signed sum over channels."""

    name = "gradxinput"
    group = "gradients"
    summary = "x * dy_c/dx, summed over channels (Shrikumar 2016)"

    def formula(self, g, t):
        a = g.Mul(t.dx, t.x)
        return a, g.reduce_sum(a, [t.channel_axis], keepdims=False)
