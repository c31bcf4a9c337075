"""LRP (Bach et al. 2015; Montavon et al. 2019) and Excitation Backprop (Zhang et al. 2016) as override rules, and
the composites that choose them, after Zennit (rules.py, composites.py).

The cotangent carried down is the relevance R. A rule on a linear layer z = F(x; W, b) (Conv, ConvTranspose, Gemm,
MatMul with a constant weight) follows Zennit's BasicHook: modify the input and the parameters (x⁺, W⁺, …), run the
layer again with them (z'), divide R by z' stabilised, apply the plain VJP with the modified weight, and multiply by
the modified input:

    R_in = Σ_k x_k ⊙ W_kᵀ (R / stab(z'))        stab(z) = z + ε·sign(z), sign(0) = 1   (zennit.core.stabilize)

The VJP is the op's plain rule called with the weight swapped (`Layer.backward`), so strides, groups, paddings and
transposes are handled once, in `rules/`. Every rule is linear in R: a graph seeded with the one-hot target gives the
relevance of R = one-hot · y_c once scaled by y_c.

Ops without a linear rule, as in Zennit's `layer_map_base`:
- activations (Zennit's `Activation` types) and BatchNormalization left unfolded: `Pass`, R goes through unchanged;
- Add/Sum of several tensors on the path (residuals) and average pools (AveragePool, GlobalAveragePool, ReduceMean):
  `Norm`, each input keeps the share it contributed. Zennit sees a residual only after a canonizer makes it a
  `zennit.layer.Sum` module; an Add with one input on the path adds a constant (a bias) and keeps its plain rule;
- everything else (MaxPool, Concat, Reshape, Mul, …) keeps its plain gradient, as autograd does in Zennit.
A MatMul or Gemm of two computed tensors keeps its gradient too, as Zennit leaves torch.matmul alone; a MatMul's
bias, a separate Add, is not part of its z.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Callable

import numpy as np
import onnx_graphsurgeon as gs

from ...errors import OnnxplainError
from ..builder import rank_of, shape_of
from ..composite import LINEAR_OPS, Composite
from ..rules import RULES
from ..rules.activation import step
from .canonize import fold_batch_norm
from .guided import relu_like

CONVOLUTIONS = ("Conv", "ConvTranspose")
DENSE = ("Gemm", "MatMul")
ACTIVATIONS = ("Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish",
               "Tanh", "Gelu", "Softplus", "Softsign", "Shrink")  # Zennit's Activation types, as ONNX ops
SUMS = ("Add", "Sum", "AveragePool", "GlobalAveragePool", "ReduceMean")
SIGN_KEEPING = ("MaxPool", "GlobalMaxPool", "AveragePool", "GlobalAveragePool", "ReduceMean", "Reshape", "Flatten",
                "Identity", "Dropout", "Concat", "Transpose", "Squeeze", "Unsqueeze")  # of inputs ≥ 0, outputs ≥ 0


def stabilize(g, z, eps: float):
    """z + ε·sign(z) with sign(0) = 1: Zennit's stabilizer, away from zero by ε on z's side."""
    return g.Add(z, g.Where(g.Less(z, g.const(0, like=z)), g.const(-eps, like=z), g.const(eps, like=z)))


def _clip(v, lo=None, hi=None):
    return None if v is None else np.clip(v, lo, hi)


@dataclass(frozen=True, eq=False)
class Layer:
    """A linear node y = F(x; W, b) seen as its input on the path x, its constant weight W and bias b (arrays; a
    Gemm's alpha and beta folded in), so that rules can run F and its VJP with modified inputs and parameters."""

    node: gs.Node
    data: int                 # index of x among the node's inputs; the weight is input 1 - data
    w: np.ndarray
    b: np.ndarray | None

    @classmethod
    def of(cls, node, g) -> "Layer | None":
        """The layer view of `node`, or None when its weight is computed (then it keeps its plain rule)."""
        data = 0 if node.op in CONVOLUTIONS or g.needs(node.inputs[0]) else 1
        weight = node.inputs[1 - data]
        bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
        if not all(isinstance(t, gs.Constant) for t in (weight, bias) if t is not None):
            return None
        alpha, beta = (node.attrs.get(k, 1.0) if node.op == "Gemm" else 1.0 for k in ("alpha", "beta"))
        w = (alpha * weight.values).astype(weight.values.dtype)
        return cls(node, data, w, None if bias is None else (beta * bias.values).astype(w.dtype))

    @property
    def x(self):
        return self.node.inputs[self.data]

    @property
    def y(self):
        return self.node.outputs[0]

    def _view(self, g, x, w):
        """The node with input x and weight w (alpha and beta 1: they are in w and b)."""
        inputs = list(self.node.inputs[:2])
        inputs[self.data], inputs[1 - self.data] = x, g.const(w)
        attrs = {**self.node.attrs, "alpha": 1.0, "beta": 1.0} if self.node.op == "Gemm" else self.node.attrs
        return SimpleNamespace(op=self.node.op, name=self.node.name, attrs=attrs, inputs=inputs,
                               outputs=self.node.outputs)

    def forward(self, g, x, w, b=None):
        """F(x; w, b)."""
        view = self._view(g, x, w)
        if b is None and self.node.op == "Gemm" and g.opset < 11:  # C is optional from opset 11 only
            b = np.zeros((), w.dtype)
        return g.op(view.op, *view.inputs, *([] if b is None else [g.const(b)]), **view.attrs)

    def backward(self, g, s, w):
        """wᵀ s: the plain VJP of the node with weight w, for the cotangent s of its output."""
        return RULES[self.node.op](self._view(g, self.x, w), [s], g)[self.data]


class LinearRule:
    """A rule for linear layers, `relevance(g, layer, R) -> R_in`; nodes with computed weights keep their plain
    rule."""

    def __call__(self, node, dys, g):
        layer = Layer.of(node, g)
        if layer is None:
            return RULES[node.op](node, dys, g)
        out = [None] * len(node.inputs)
        out[layer.data] = self.relevance(g, layer, dys[0])
        return out

    def relevance(self, g, layer: Layer, r):
        raise NotImplementedError


def _share(g, layer, r, xp, xn, wp, wn, b, eps):
    """x⁺ ⊙ wpᵀ s + x⁻ ⊙ wnᵀ s, s = R / stab(F(x⁺; wp, b) + F(x⁻; wn)): one term pair of Zennit's γ, αβ and z⁺.
    xn is None where x ≥ 0: its terms are zero."""
    z = layer.forward(g, xp, wp, b)
    s = g.Div(r, stabilize(g, z if xn is None else g.Add(z, layer.forward(g, xn, wn)), eps))
    share = g.Mul(xp, layer.backward(g, s, wp))
    return share if xn is None else g.Add(share, g.Mul(xn, layer.backward(g, s, wn)))


def _signs(g, x):
    """x⁺ = max(x, 0) and x⁻ = min(x, 0); (x, None) when x ≥ 0 by construction, which saves half the convolutions."""
    if nonnegative(x):
        return x, None
    xp = g.Relu(x)
    return xp, g.Sub(x, xp)


def nonnegative(t: gs.Tensor) -> bool:
    """Whether t ≥ 0 by construction: a ReLU's output (a Clip from 0 included), pooled, reshaped or concatenated."""
    node = t.inputs[0] if t.inputs else None
    if node is None or relu_like(node):
        return node is not None
    data = node.inputs if node.op == "Concat" else node.inputs[:1]
    return node.op in SIGN_KEEPING and all(nonnegative(i) for i in data)


@dataclass(frozen=True)
class Epsilon(LinearRule):
    """LRP-ε: R_in = x ⊙ Wᵀ (R / stab(z, ε)), z the layer's output, bias included; LRP-0 as ε → 0."""

    epsilon: float = 1e-6

    def relevance(self, g, layer, r):
        return g.Mul(layer.x, layer.backward(g, g.Div(r, stabilize(g, layer.y, self.epsilon)), layer.w))


@dataclass(frozen=True)
class AlphaBeta(LinearRule):
    """LRP-αβ, α − β = 1: R_in = α·(share of z⁺) − β·(share of z⁻), with z⁺ = W⁺x⁺ + W⁻x⁻ + b⁺ the positive
    contributions and z⁻ = W⁻x⁺ + W⁺x⁻ + b⁻ the negative ones. β = 0 is z⁺ (ZPlus). `bias=False` leaves b out of z⁺
    and z⁻ (Excitation Backprop's winning probabilities)."""

    alpha: float = 2.0
    beta: float = 1.0
    stabilizer: float = 1e-6
    bias: bool = True

    def relevance(self, g, layer, r):
        (xp, xn), w = _signs(g, layer.x), layer.w
        b = layer.b if self.bias else None
        wp, wn = np.maximum(w, 0), np.minimum(w, 0)
        positive = _share(g, layer, r, xp, xn, wp, wn, _clip(b, 0), self.stabilizer)
        if not self.beta:
            return positive
        negative = _share(g, layer, r, xp, xn, wn, wp, _clip(b, None, 0), self.stabilizer)
        return g.Sub(g.Mul(g.const(self.alpha, like=r), positive), g.Mul(g.const(self.beta, like=r), negative))


def ZPlus(stabilizer: float = 1e-6, bias: bool = True) -> AlphaBeta:
    """LRP-z⁺ (Zennit's ZPlus): αβ with α = 1, β = 0."""
    return AlphaBeta(1.0, 0.0, stabilizer, bias)


@dataclass(frozen=True)
class Gamma(LinearRule):
    """LRP-γ, generalised to inputs of both signs as Zennit's: contributions of z's own sign are raised by γ.
    Where z > 0: weights W + γW⁺ on x⁺ (bias b + γb⁺) and W + γW⁻ on x⁻; where z < 0 the other way round."""

    gamma: float = 0.25
    stabilizer: float = 1e-6

    def relevance(self, g, layer, r):
        def raised(v, lo, hi):  # v + γ·clip(v)
            return None if v is None else v + self.gamma * np.clip(v, lo, hi)

        (xp, xn), (w, b), y = _signs(g, layer.x), (layer.w, layer.b), layer.y
        up, bias_up, down, bias_down = raised(w, 0, None), raised(b, 0, None), raised(w, None, 0), raised(b, None, 0)
        above, below = step(g, y), g.cast_like(g.Less(y, g.const(0, like=y)), y)
        return g.Add(_share(g, layer, g.Mul(r, above), xp, xn, up, down, bias_up, self.stabilizer),
                     _share(g, layer, g.Mul(r, below), xp, xn, down, up, bias_down, self.stabilizer))


@dataclass(frozen=True)
class ZBox(LinearRule):
    """z^B for inputs bounded by l ≤ x ≤ h (per channel of x, or one value): R_in = x ⊙ Wᵀs − l ⊙ W⁺ᵀs − h ⊙ W⁻ᵀs,
    s = R / stab(z − F(l; W⁺, b⁺) − F(h; W⁻, b⁻)). The first layer's rule of EpsilonGammaBox."""

    low: tuple[float, ...] = (0.0,)
    high: tuple[float, ...] = (1.0,)
    stabilizer: float = 1e-6

    def relevance(self, g, layer, r):
        x, w, b = layer.x, layer.w, layer.b
        lo, hi = (g.Expand(self._bound(g, v, x), g.Shape(x)) for v in (self.low, self.high))
        wp, wn = np.maximum(w, 0), np.minimum(w, 0)
        z = g.Sub(g.Sub(layer.y, layer.forward(g, lo, wp, _clip(b, 0))), layer.forward(g, hi, wn, _clip(b, None, 0)))
        s = g.Div(r, stabilize(g, z, self.stabilizer))
        return g.Sub(g.Sub(g.Mul(x, layer.backward(g, s, w)), g.Mul(lo, layer.backward(g, s, wp))),
                     g.Mul(hi, layer.backward(g, s, wn)))

    @staticmethod
    def _bound(g, v, x):
        """One bound as a constant broadcasting over x: a scalar, or (1, C, 1, …) for one value per channel."""
        v = np.asarray(v, np.float64).ravel()
        if v.size > 1 and v.size != shape_of(x)[1]:
            raise OnnxplainError(f"z^B's bounds have {v.size} values for the {x.shape[1]} channels of '{x.name}'")
        return g.const(v.reshape(1, -1, *[1] * (rank_of(x) - 2)) if v.size > 1 else v[0], like=x)


@dataclass(frozen=True)
class WSquare(LinearRule):
    """w²: relevance spread in proportion to the squared weights, whatever the input:
    R_in = (W²)ᵀ (R / stab(F(1; W², b²)))."""

    stabilizer: float = 1e-6

    def parameters(self, layer):
        return layer.w ** 2, None if layer.b is None else layer.b ** 2

    def relevance(self, g, layer, r):
        w, b = self.parameters(layer)
        ones = g.Expand(g.const(1, like=layer.x), g.Shape(layer.x))
        return layer.backward(g, g.Div(r, stabilize(g, layer.forward(g, ones, w, b), self.stabilizer)), w)


@dataclass(frozen=True)
class Flat(WSquare):
    """Flat (Lapuschkin et al. 2019): w² with every weight 1 and no bias, relevance spread evenly over the receptive
    field. The first layer's rule of EpsilonPlusFlat."""

    def parameters(self, layer):
        return np.ones_like(layer.w), None


@dataclass(frozen=True)
class Pass:
    """Relevance passes unchanged (activations, BatchNormalization), as Zennit's Pass."""

    def __call__(self, node, dys, g):
        return [dys[0]] + [None] * (len(node.inputs) - 1)


@dataclass(frozen=True)
class Norm:
    """Zennit's Norm for sums and averages: each input keeps the share it contributed,
    R_i = x_i ⊙ (∂y/∂x_i)ᵀ (R / stab(y)). An Add with one input on the path adds a constant: plain rule."""

    stabilizer: float = 1e-6

    def __call__(self, node, dys, g):
        plain = RULES[node.op]
        if node.op in ("Add", "Sum") and sum(map(g.needs, node.inputs)) < 2:
            return plain(node, dys, g)
        s = g.Div(dys[0], stabilize(g, node.outputs[0], self.stabilizer))
        return [None if d is None else g.Mul(x, d) for x, d in zip(node.inputs, plain(node, [s], g))]


@dataclass(frozen=True)
class Contrastive(LinearRule):
    """Contrastive EBP's top layer (Zhang et al. 2016): the rule's relevance for the classifier W minus that for
    its dual −W, whose unit fires for everything that is not the class."""

    rule: LinearRule

    def relevance(self, g, layer, r):
        dual = replace(layer, w=-layer.w, b=None if layer.b is None else -layer.b)
        return g.Sub(self.rule.relevance(g, layer, r), self.rule.relevance(g, dual, r))


@dataclass(frozen=True)
class TopComposite(Composite):
    """A Composite whose last linear layer reached from the input (the classifier) gets the rule `last`."""

    last: Callable | None = None

    def lookup(self, graph, wrt):
        rule_of, reached, top = super().lookup(graph, wrt), {t.name for t in wrt}, None
        for node in graph.nodes:  # topologically sorted
            if any(t.name in reached for t in node.inputs):
                reached.update(t.name for t in node.outputs)
                top = node if node.op in LINEAR_OPS else top
        return lambda node: self.last if node is top else rule_of(node)


def _lrp(name, conv, dense, stabilizer, first=None, cls=Composite, **kw) -> Composite:
    """Zennit's layer_map_base plus `conv` for convolutions and `dense` for Gemm/MatMul; BatchNorm folded first."""
    base = tuple((op, Pass()) for op in ACTIVATIONS + ("BatchNormalization",)) + tuple(
        (op, Norm(stabilizer)) for op in SUMS)
    rules = base + tuple((op, conv) for op in CONVOLUTIONS) + tuple((op, dense) for op in DENSE)
    return cls(name, rules, first, canonizers=(fold_batch_norm,), **kw)


def epsilon_plus_flat(epsilon=1e-6, stabilizer=1e-6) -> Composite:
    """Zennit's EpsilonPlusFlat: z⁺ for convolutions, ε for dense layers, flat for the first layer."""
    return _lrp("epsilon_plus_flat", ZPlus(stabilizer), Epsilon(epsilon), stabilizer, first=Flat(stabilizer))


def epsilon_gamma_box(low, high, epsilon=1e-6, gamma=0.25, stabilizer=1e-6) -> Composite:
    """Zennit's EpsilonGammaBox: γ for convolutions, ε for dense layers, z^B within [low, high] for the first."""
    return _lrp("epsilon_gamma_box", Gamma(gamma, stabilizer), Epsilon(epsilon), stabilizer,
                first=ZBox(tuple(low), tuple(high), stabilizer))


def epsilon_alpha_beta(epsilon=1e-6, alpha=2.0, beta=1.0, stabilizer=1e-6) -> Composite:
    """Zennit's EpsilonAlpha2Beta1 (α = 2, β = 1): αβ for convolutions, ε for dense layers."""
    return _lrp(f"epsilon_alpha{alpha:g}_beta{beta:g}", AlphaBeta(alpha, beta, stabilizer), Epsilon(epsilon),
                stabilizer)


def epsilon_everywhere(epsilon=1e-6) -> Composite:
    """ε for every linear layer and every sum (Captum's LRP default rules)."""
    return _lrp("epsilon", Epsilon(epsilon), Epsilon(epsilon), epsilon)


def excitation_backprop(stabilizer=1e-6) -> Composite:
    """Excitation Backprop (Zhang et al. 2016): z⁺ without bias for every linear layer, so that R, the marginal
    winning probability, sums to that of the target at every layer (Zennit's ExcitationBackprop with its bias
    zeroed; activations and BatchNorm pass as in the LRP composites)."""
    rule = ZPlus(stabilizer, bias=False)
    return _lrp("excitation_backprop", rule, rule, stabilizer)


def contrastive_excitation_backprop(stabilizer=1e-6) -> Composite:
    """Contrastive EBP: EBP whose classifier layer propagates the class minus its dual (see `Contrastive`)."""
    rule = ZPlus(stabilizer, bias=False)
    return _lrp("contrastive_excitation_backprop", rule, rule, stabilizer, cls=TopComposite,
                last=Contrastive(rule))
