"""SISE, Semantic Input Sampling for Explanation (Sattarzadeh et al., AAAI 2021): Score-CAM's masked scoring at the
end of every convolutional block, the per-layer maps fused from low to high level through Otsu masks."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import OnnxplainError
from ..perturb import bilinear_weights
from ..rewrite.graph import GRAD, TARGET, Request
from ..rewrite.layers import block_ends
from .base import Method
from .cam import MASK, Gate

BINS = 256  # Otsu's histogram over [0, 1]


@dataclass(frozen=True)
class SISE(Method):
    """For each layer l (low to high level) and its channels A_k:

    1. Layers: by default the end of each convolutional block, `block_ends`: the last tensor at each spatial
       resolution on the path from the image to the score, in graph order. The last tensor before a resolution drop
       is the one the down-sampling node reads (VGG's ReLU before each max-pool; MobileNetV2's expanded tensor before
       each stride-2 depth-wise conv; ResNet-50's stride-2 conv input); the last one is the last spatial tensor.
       `layers` overrides them (names, comma-separated or a tuple, low level first).
    2. One forward and one backward pass of y_c to all layers: α_k = spatial mean of ∂y_c/∂A_k; map k is kept when
       α_k > μ·max_k α_k (μ = `mu`, 0: the positively contributing channels) and A_k is not constant.
    3. m_k = A_k upsampled bilinearly to the input and min-max normalised to [0, 1].
    4. s_k = softmax(f(x ⊙ m_k))_c, batch_size masked inputs per pass through Score-CAM's `Gate` session (the graph
       upsamples, normalises and applies the fed low-resolution maps); V_l = Σ_k s_k m_k / ‖m_k‖₁, min-max
       normalised. Each mask is divided by its own sum over pixels, as the authors' code does
       (`masks /= masks.sum(axis=(0,1))`): a small mask that keeps the score counts more than a large one. Dividing
       each pixel by Σ_k m_k instead makes every s_k ≈ 1 mask cancel out, and the map follows no object.
    5. F ← V_1; for l ≥ 2: F ← (F + V_l) ⊙ B(V_l), B(V) = [V ≥ t], t = `otsu(V, bins)`.

    Attributions: the layer maps V (N×L×H×W); maps: F min-max normalised. info: "layers" (names) and "kept" (maps
    kept per layer), per image.
    """

    name = "sise"
    group = "activations"
    summary = "block-end feature maps as input masks, fused across layers by Otsu masks (Sattarzadeh 2021)"
    one_graph = False
    layers: tuple[str, ...] | str | None = None
    mu: float = 0.0
    bins: int = BINS

    def __post_init__(self):
        layers = self.layers.split(",") if isinstance(self.layers, str) else self.layers or ()
        object.__setattr__(self, "layers", tuple(str(n).strip() for n in layers if str(n).strip()) or None)
        if isinstance(self.mu, bool) or not isinstance(self.mu, (int, float)) or not 0 <= self.mu < 1:
            raise OnnxplainError(f"sise: mu must be a number in [0, 1), not {self.mu!r}")
        if isinstance(self.bins, bool) or not isinstance(self.bins, int) or self.bins < 2:
            raise OnnxplainError(f"sise: bins must be a whole number, at least 2, not {self.bins!r}")

    def model_passes(self, size):
        return None  # one per selected channel of each layer

    def run(self, model, inputs, targets, layer, batch_size):
        layers = self.layers or tuple(block_ends(model.layers(), model.layout_of))
        spatial = dict(model.layers())
        for name in layers:
            if name not in spatial:
                raise OnnxplainError(f"sise: '{name}' is not a tensor with spatial extent between the input and the "
                                     f"score (see `onnxplain inspect`)")
        sess = model.session(Request(expose=(*layers, model.score), differentiate=(model.score,), wrt=layers,
                                     seed="target", keep_outputs=False))
        out = sess.run([*layers, *(GRAD.format(n) for n in layers), model.score, TARGET + "_used"],
                       {model.input: inputs, TARGET: targets}, batch_size)
        acts, grads, (logits, used) = out[:len(layers)], out[len(layers):-2], out[-2:]
        acts, grads = ([np.moveaxis(t, model.channel_axis_of(name), 1) for t, name in zip(ts, layers)]
                       for ts in (acts, grads))
        scorer = model.session(Request(expose=(model.score,), keep_outputs=False,
                                       transform=Gate(model.input, model.channel_axis, model.input_size)))
        views = np.zeros((len(inputs), len(layers), *model.input_size), np.float32)
        kept = np.zeros((len(inputs), len(layers)), np.int64)
        for i, l in np.ndindex(*kept.shape):
            alpha = grads[l][i].mean(axis=(1, 2))
            a = acts[l][i]
            chosen = (alpha > self.mu * alpha.max()) & (a.max(axis=(1, 2)) > a.min(axis=(1, 2)))
            kept[i, l] = chosen.sum()
            views[i, l] = self.layer_map(model, scorer, inputs[i:i + 1], a[chosen], int(used[i]), batch_size)
        fused = views[:, 0]
        for v in views.transpose(1, 0, 2, 3)[1:]:
            fused = (fused + v) * (v >= np.array([otsu(m, self.bins) for m in v])[:, None, None])
        info = {"layers": np.array([layers] * len(inputs)), "kept": kept}
        return views, normalise(fused), logits, used, info

    @staticmethod
    def layer_map(model, scorer, x, maps, c, batch_size) -> np.ndarray:
        """V_l = Σ_k s_k m_k / ‖m_k‖₁, min-max normalised, for the low-resolution maps A_k (K×h×w) of image x."""
        rows, cols = (bilinear_weights(n, big).astype(np.float64) for n, big in zip(maps.shape[1:], model.input_size))
        weighted = np.zeros(model.input_size)
        for start in range(0, len(maps), batch_size):
            batch = maps[start:start + batch_size]
            y = scorer.run([model.score], {model.input: x, MASK: batch})[0]
            s = model.probabilities(y.astype(np.float64))[:, c]
            m = normalise(rows @ batch.astype(np.float64) @ cols.T)
            weighted += np.einsum("k,khw->hw", s / m.sum(axis=(1, 2)), m)
        return normalise(weighted)


def normalise(m: np.ndarray) -> np.ndarray:
    """Each H×W map of m (…×H×W) min-max normalised to [0, 1]; a constant map becomes 0."""
    lo, hi = m.min(axis=(-2, -1), keepdims=True), m.max(axis=(-2, -1), keepdims=True)
    return np.divide(m - lo, hi - lo, out=np.zeros_like(m), where=hi > lo)


def otsu(v: np.ndarray, bins: int = BINS) -> float:
    """Otsu's threshold of values in [0, 1]: the bin edge t maximising the between-class variance w₀w₁(μ₀ − μ₁)²
    of the histogram (`bins` equal bins, each value at its bin's centre, 1 in the last) split into the bins below t
    and those from t on; the first such edge on ties."""
    counts = np.bincount(np.minimum((v.ravel() * bins).astype(np.int64), bins - 1), minlength=bins)
    p = counts / counts.sum()
    centres = (np.arange(bins) + 0.5) / bins
    w0 = np.cumsum(p)[:-1]
    m0 = np.cumsum(p * centres)[:-1]
    mean = (p * centres).sum()
    w1 = 1 - w0
    between = np.divide((mean * w0 - m0) ** 2, w0 * w1, out=np.zeros_like(w0), where=(w0 > 0) & (w1 > 0))
    return (np.argmax(between) + 1) / bins
