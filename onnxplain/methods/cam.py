"""The CAM family: a map Σ_k w_k A_k over the channels of a layer, each method its weights w_k."""
from __future__ import annotations

from dataclasses import dataclass

from .base import Method


class CAM(Method):
    """ReLU(Σ_k w_k A_k) at the layer's resolution; subclasses define the channel weights w (N×K×1×1)."""

    group = "activations"
    at_layer = True

    def weights(self, g, t):
        raise NotImplementedError

    def formula(self, g, t):
        cam = g.Relu(g.reduce_sum(g.Mul(self.weights(g, t), t.a), [t.channel_axis], keepdims=False))
        return cam, cam


@dataclass(frozen=True)
class GradCAM(CAM):
    """w_k = spatial mean of ∂y_c/∂A_k (Selvaraju et al. 2017)."""

    name = "gradcam"
    summary = "ReLU(sum_k mean(dy_c/dA_k) A_k) at a layer (Selvaraju 2017)"

    def weights(self, g, t):
        return g.reduce_mean(t.da, t.spatial_axes, keepdims=True)
