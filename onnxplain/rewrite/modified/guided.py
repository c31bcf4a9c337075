"""Guided Backprop (Springenberg et al. 2015) and Deconvnet (Zeiler & Fergus 2014): the backward pass of each
ReLU-like op replaced; every other op keeps its plain VJP rule.

ReLU-like ops: Relu, and Clip with a constant lower bound of 0 (ReLU6, MobileNetV2's activation, or any capped
ReLU). A Clip's forward mask is that of its plain rule, 1[0 < x < max]. Other ops keep the plain gradient, as
in Captum, which hooks only nn.ReLU modules:
- other Clips (hardtanh, or bounds computed at run time);
- LeakyRelu, PRelu, HardSwish.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..composite import Composite
from ..rules import RULES, optional_input

RELU_LIKE_OPS = ("Relu", "Clip")


def relu_like(node: gs.Node) -> bool:
    """Relu, or a Clip whose lower bound is the constant 0 (an attribute before opset 11, an input after)."""
    if node.op != "Clip":
        return node.op == "Relu"
    lo = node.attrs.get("min", optional_input(node, 1))
    if isinstance(lo, gs.Constant):
        lo = lo.values
    return lo is not None and not isinstance(lo, gs.Tensor) and np.size(lo) == 1 and float(np.ravel(lo)[0]) == 0


def guided(node, dys, g):
    """dx = ReLU(dy)·1[x > 0]: the ReLU of the plain backward pass (Captum's GuidedBackprop)."""
    dx, *rest = RULES[node.op](node, dys, g)
    return [g.Relu(dx) if relu_like(node) else dx, *rest]


def deconvnet(node, dys, g):
    """dx = ReLU(dy): the backward pass ignores the forward mask (Captum's Deconvolution)."""
    if not relu_like(node):
        return RULES[node.op](node, dys, g)
    return [g.Relu(dys[0])]


GUIDED = Composite("guided", rules=tuple((op, guided) for op in RELU_LIKE_OPS))
DECONVNET = Composite("deconvnet", rules=tuple((op, deconvnet) for op in RELU_LIKE_OPS))
