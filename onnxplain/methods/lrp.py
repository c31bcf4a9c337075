"""Relevance methods: LRP with Zennit's composites, Excitation Backprop and contrastive Excitation Backprop.

Each is the input (or layer) cotangent of the score under a composite of override rules (`rewrite.modified.lrp`),
seeded with the one-hot target; BatchNormalization is folded into the preceding Conv first. Maps are the signed sum
of the relevance over channels: relevance is a decomposition, so channels add up.
"""
from __future__ import annotations

from dataclasses import dataclass
from numbers import Real

import numpy as np

from ..errors import OnnxplainError
from ..rewrite.modified import lrp as rules
from .base import Method

COMPOSITES = ("epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1", "epsilon")
OVERFLOW = ("; its relevance overflowed float32 through the rules, which are CNN rules: each LayerNorm and attention "
            "block of a transformer amplifies it")


def _number(method: str, key: str, value, least: float = 0.0, strict: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, Real) or not (value > least if strict else value >= least):
        raise OnnxplainError(f"{method}'s {key} must be a number {'>' if strict else '>='} {least:g}, not {value!r}")


def _bounds(method: str, key: str, value) -> tuple[float, ...] | None:
    """None, a number, or one number per channel, as a tuple."""
    if value is None:
        return None
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if not values or not all(isinstance(v, Real) and not isinstance(v, bool) for v in values):
        raise OnnxplainError(f"{method}'s {key} must be a number or one number per channel, not {value!r}")
    return tuple(float(v) for v in values)


def score_of_target(g, t):
    """y_c per image, shaped N×1×…×1 to scale an input-shaped tensor."""
    onehot = g.OneHot(t.target, g.size_of(t.y, 1), g.const([0, 1], like=t.y), axis=-1)
    return g.unsqueeze(g.reduce_sum(g.Mul(t.y, onehot), [1], keepdims=False), [1, 2, 3])


@dataclass(frozen=True)
class LRP(Method):
    """Layer-wise relevance propagation (Bach et al. 2015; Montavon et al. 2019) with Zennit's composites: the score
    y_c is redistributed layer by layer, R = one-hot · y_c at the output (as Captum's LRP), so Σ R_input ≈ y_c.

    composite: epsilon_plus_flat (z⁺ conv, ε dense, flat first layer), epsilon_gamma_box (γ conv, ε dense, z^B
    first layer within [low, high]), epsilon_alpha2_beta1 (αβ conv, ε dense) or epsilon (ε everywhere, Captum's
    default). low/high: the input bounds, one value or one per channel; by default those of a 0..255 image after
    the model's preprocessing. stabilizer: the ε of every rule but ε itself.
    """

    name = "lrp"
    group = "modified"
    summary = "relevance of y_c by LRP rules per layer, Zennit's composites (Bach 2015; Montavon 2019)"
    non_finite = OVERFLOW + " (-p composite=epsilon -p epsilon=1 damps it), or use a gradient or black-box method"
    composite: str = "epsilon_plus_flat"  # the composite's name (a parameter: `rules(model)` builds it)
    epsilon: float = 1e-6
    gamma: float = 0.25
    alpha: float = 2.0
    beta: float = 1.0
    low: object = None
    high: object = None
    stabilizer: float = 1e-6

    def __post_init__(self):
        if self.composite not in COMPOSITES:
            raise OnnxplainError(f"unknown LRP composite {self.composite!r} (available: {', '.join(COMPOSITES)})")
        for key in ("gamma", "alpha", "beta"):
            _number("lrp", key, getattr(self, key))
        for key in ("epsilon", "stabilizer"):  # at 0, units with z = 0 would give 0/0
            _number("lrp", key, getattr(self, key), strict=True)
        if abs(self.alpha - self.beta - 1) > 1e-9:
            raise OnnxplainError(f"lrp's alpha - beta must be 1 (alpha={self.alpha}, beta={self.beta})")
        for key in ("low", "high"):
            object.__setattr__(self, key, _bounds("lrp", key, getattr(self, key)))
        if self.low is not None and self.high is not None and not np.all(np.less(self.low, self.high)):
            raise OnnxplainError(f"lrp's low must be below high (low={self.low}, high={self.high})")

    def rules(self, model):
        if self.composite == "epsilon_plus_flat":
            return rules.epsilon_plus_flat(self.epsilon, self.stabilizer)
        if self.composite == "epsilon_gamma_box":
            low, high = self.box(model.preprocessing)
            return rules.epsilon_gamma_box(low, high, self.epsilon, self.gamma, self.stabilizer)
        if self.composite == "epsilon_alpha2_beta1":
            return rules.epsilon_alpha_beta(self.epsilon, self.alpha, self.beta, self.stabilizer)
        return rules.epsilon_everywhere(self.epsilon)

    def box(self, p):
        """(low, high): the given bounds, else those of pixel values 0 and 255 after preprocessing `p`."""
        low, high = (tuple(((v * p.scale - np.asarray(p.mean)) / np.asarray(p.std)).tolist()) for v in (0, 255))
        return self.low or low, self.high or high

    def formula(self, g, t):
        r = g.Mul(t.dx, score_of_target(g, t))
        return r, g.reduce_sum(r, [t.channel_axis], keepdims=False)


@dataclass(frozen=True)
class ExcitationBackprop(Method):
    """Excitation Backprop (Zhang et al. 2016): the marginal winning probability of each input unit in a top-down
    winner-take-all from the class unit (P = 1), passed down by z⁺ without bias, P_i = Σ_j x_i w⁺_ij / Σ_k x_k w⁺_kj
    · P_j. Σ P = 1, less the mass reaching units that fire on their bias alone (bias-free z⁺ = 0 there). The map is
    its signed sum over channels."""

    name = "ebp"
    group = "modified"
    summary = "marginal winning probabilities by z+ without bias, from the class down (Zhang 2016)"
    non_finite = OVERFLOW + "; use a gradient or black-box method"
    stabilizer: float = 1e-6

    def __post_init__(self):
        _number(self.name, "stabilizer", self.stabilizer, strict=True)

    def rules(self, model):
        return rules.excitation_backprop(self.stabilizer)

    def formula(self, g, t):
        return t.dx, g.reduce_sum(t.dx, [t.channel_axis], keepdims=False)


@dataclass(frozen=True)
class ContrastiveExcitationBackprop(ExcitationBackprop):
    """Contrastive Excitation Backprop (Zhang et al. 2016): the winning probabilities of the class minus those of
    its dual, the class unit with negated weights, at a layer: attributions are that difference, shaped like the
    layer; the map is ReLU of its sum over channels (TorchRay's contrastive saliency), upsampled.

    EBP is linear in the top-down signal, so the difference is propagated as one signal from the classifier down
    (TorchRay subtracts at a middle "contrast" layer: the same numbers). The layer defaults to the CAM layer (the
    last with spatial extent); the paper and TorchRay read a middle one (VGG16 pool2-pool3); any tensor name works,
    the input's included. Σ over the layer is 0: both signals carry probability 1.
    """

    name = "cebp"
    summary = "ReLU of class-minus-dual winning probabilities at a layer (Zhang 2016)"
    at_layer = True

    def rules(self, model):
        return rules.contrastive_excitation_backprop(self.stabilizer)

    def formula(self, g, t):
        return t.da, g.Relu(g.reduce_sum(t.da, [t.channel_axis], keepdims=False))
