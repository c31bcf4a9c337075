"""The CAM family (the survey's "activations" group): maps over the channels k of a layer's activation A.

Most members are ReLU(Σ_k w_k ⊙ A_k), each its weights w: one per channel (N×K×1×1) or one per element (shaped like
A, LayerCAM and HiResCAM). Gradient-free members read A alone: CAM reads the linear head's weights, Eigen-CAM A's
principal component, FEM its bright spots. All of those are graph nodes, so `onnxplain export` writes them.
Score-CAM and Ablation-CAM score masked inputs or ablated channels: batches of passes through one rewritten graph
each, folded on the host, so they are not one graph.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx_graphsurgeon as gs

from ..errors import OnnxplainError
from ..perturb import bilinear_weights
from ..rewrite.builder import Builder
from ..rewrite.graph import Request, opset_of, toposort
from ..rewrite.layers import block_ends
from .base import Head, Method, upsample

SQUARINGS = 24   # Eigen-CAM: G^(2^24) leaves only G's top eigenvector for any eigenvalue ratio float32 tells from 1
MASK = "onnxplain_mask"  # graph input of Score-CAM's and Ablation-CAM's passes: one mask per pass


class CAM(Method):
    """ReLU(Σ_k w_k ⊙ A_k) at the layer's resolution; subclasses define the weights w (N×K×1×1 or shaped like A)."""

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


@dataclass(frozen=True)
class ClassActivationMap(CAM):
    """w_k = W_ck, the row for class c of the linear layer that scores the globally average-pooled layer (Zhou et al.
    2016). Only that structure defines CAM, so it is checked in the graph. There ∂y_c/∂A_k(ij) = W_ck / (h·w): the
    spatial sum of the gradient is the same row, and CAM equals h·w times Grad-CAM."""

    name = "cam"
    summary = "ReLU(sum_k W_ck A_k), W the linear layer after global pooling (Zhou 2016)"
    uses_gradient = False

    def weights(self, g, t):
        rows = g.Gather(g.const(linear_head(t)), t.target, axis=0)  # N×K
        return g.unsqueeze(rows, list(t.spatial_axes))


def linear_head(t) -> np.ndarray:
    """classes×K: the weights of the one linear layer that maps the global average of layer t.a to the scores t.y."""
    def refuse(why: str):
        raise OnnxplainError(f"cam (Zhou 2016) needs layer '{t.a.name}' to feed global average pooling and then one "
                             f"linear layer giving the scores, but {why}; use gradcam, which needs no such head")

    def next_node(tensor, after: str) -> gs.Node:
        if len(tensor.outputs) != 1:
            refuse(f"{after} feeds {len(tensor.outputs)} nodes")
        return tensor.outputs[0]

    pool = next_node(t.a, "it")
    if pool.op == "ReduceMean":
        axes = pool.attrs.get("axes")
        if axes is None and len(pool.inputs) > 1 and isinstance(pool.inputs[1], gs.Constant):
            axes = pool.inputs[1].values
        if axes is None or sorted(int(a) % 4 for a in np.ravel(axes)) != sorted(t.spatial_axes):
            refuse(f"ReduceMean '{pool.name}' does not average over height and width")
    elif pool.op != "GlobalAveragePool":
        refuse(f"it feeds {pool.op} '{pool.name}'")
    node = next_node(pool.outputs[0], "the pooling")
    while node.op in ("Flatten", "Reshape", "Squeeze", "Identity", "Dropout"):
        node = next_node(node.outputs[0], f"{node.op} '{node.name}'")
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    if node.op not in ("Gemm", "MatMul") or not isinstance(weight, gs.Constant) or node.attrs.get("transA", 0):
        refuse(f"the pooling is followed by {node.op} '{node.name}'")
    rows = weight.values.T if node.op == "MatMul" or not node.attrs.get("transB", 0) else weight.values
    out = node.outputs[0]
    if node.op == "MatMul" and len(out.outputs) == 1 and out.outputs[0].op == "Add":
        out = out.outputs[0].outputs[0]  # the bias
    while out is not t.y and len(out.outputs) == 1 and out.outputs[0].op == "Identity":
        out = out.outputs[0].outputs[0]
    if out is not t.y:
        refuse(f"{node.op} '{node.name}' is followed by more layers before the scores")
    return (node.attrs.get("alpha", 1.0) * rows).astype(np.float32)


@dataclass(frozen=True)
class GradCAMPlusPlus(CAM):
    """w_k = Σ_ij α_k(ij) ReLU(g_k(ij)), α = g² / (2g² + Σ_ab A_k(ab) g³), g = ∂y_c/∂A (Chattopadhyay et al. 2018,
    Eq. 19, with exp(y_c)'s derivatives, which cancel in α). α = 0 where its denominator is 0, as in the authors'
    code; in particular where g = 0. (pytorch-grad-cam adds 1e-6 to the denominator instead.)"""

    name = "gradcampp"
    summary = "Grad-CAM with pixel weights alpha from 2nd/3rd-order terms (Chattopadhyay 2018)"

    def weights(self, g, t):
        g2 = g.Mul(t.da, t.da)
        den = g.Add(g.Mul(g2, g.const(2, like=g2)),
                    g.Mul(g.reduce_sum(t.a, t.spatial_axes, keepdims=True), g.Mul(g2, t.da)))
        alpha = g.Div(g2, nonzero(g, den))
        return g.reduce_sum(g.Mul(alpha, g.Relu(t.da)), t.spatial_axes, keepdims=True)


def nonzero(g, d):
    """d with its zeros replaced by 1, as a denominator (for a numerator that is 0 there)."""
    zero = g.Equal(d, g.const(0, like=d))
    return g.Where(zero, g.const(1, like=d), d)


@dataclass(frozen=True)
class XGradCAM(CAM):
    """w_k = Σ_ij (A_k(ij) / Σ_ab A_k(ab)) ∂y_c/∂A_k(ij) (Fu et al. 2020); w_k = 0 for a channel that sums to 0."""

    name = "xgradcam"
    summary = "gradients weighted by the normalised activation (Fu 2020)"

    def weights(self, g, t):
        total = g.reduce_sum(t.a, t.spatial_axes, keepdims=True)
        return g.Div(g.reduce_sum(g.Mul(t.a, t.da), t.spatial_axes, keepdims=True), nonzero(g, total))


@dataclass(frozen=True)
class HiResCAM(CAM):
    """w = ∂y_c/∂A element-wise: ReLU(Σ_k ∂y_c/∂A_k ⊙ A_k) (Draelos & Carin 2020)."""

    name = "hirescam"
    summary = "ReLU(sum_k dy_c/dA_k * A_k), element-wise (Draelos 2020)"

    def weights(self, g, t):
        return t.da


@dataclass(frozen=True)
class LayerCAM(CAM):
    """w = ReLU(∂y_c/∂A) element-wise (Jiang et al. 2021).

    layers: more layers to fuse with `layer` (names, comma-separated or a tuple; "blocks": the last tensor at each
    resolution). Fused as the paper's Eq. 9 (as TorchCAM applies it): each layer's map scaled to
    tanh(γ·M / max M), γ = `gamma`, upsampled bilinearly to the input, then the element-wise maximum. The
    attributions are then that fused map. All layers come from one backward pass.
    """

    name = "layercam"
    summary = "ReLU(sum_k ReLU(dy_c/dA_k) * A_k), fusable over layers (Jiang 2021)"
    layers: tuple[str, ...] | str = ()
    gamma: float = 2.0

    def __post_init__(self):
        layers = self.layers.split(",") if isinstance(self.layers, str) else self.layers
        object.__setattr__(self, "layers", tuple(str(n).strip() for n in layers if str(n).strip()))

    def weights(self, g, t):
        return g.Relu(t.da)

    def request(self, model, layer):
        request = super().request(model, layer)
        if not self.layers:
            return request
        extra = block_ends(model.layers(), model.layout_of) if self.layers == ("blocks",) else self.layers
        names = tuple(dict.fromkeys((layer, *extra)))
        head = FusedHead(self, model.input, model.score, layer, model.layout_of(layer), model.input_size,
                         model.grid_of(layer), layers=tuple((n, model.layout_of(n), model.grid_of(n)) for n in names),
                         gamma=self.gamma)
        return replace(request, wrt=names, head=head)


@dataclass(frozen=True)
class FusedHead(Head):
    """The method's map at each of `layers` (name, layout, patch grid: each layer read in its own layout), each
    scaled to tanh(γ·M / max M), upsampled and fused by the maximum."""

    layers: tuple[tuple[str, str, tuple[int, int] | None], ...] = ()
    gamma: float = 2.0

    def build(self, g, tensors, grads, target):
        fused = []
        for name, layout, grid in self.layers:
            m = Head.build(replace(self, layer=name, layout=layout, grid=grid), g, tensors, grads, target)[
                "attributions"]
            top = positive(g, g.reduce_max(m, [1, 2], keepdims=True))
            fused.append(upsample(g, g.Tanh(g.Mul(g.Div(m, top), g.const(self.gamma, like=m))), self.size))
        m = fused[0] if len(fused) == 1 else g.Max(*fused)
        return {"attributions": m, "maps": m}


@dataclass(frozen=True)
class EigenCAM(CAM):
    """ReLU(M v₁) (Muhammad & Yeasin 2020, as pytorch-grad-cam computes it): M is the h·w × K activation matrix with
    each channel's spatial mean removed, v₁ its first right singular vector, M v₁ = σ₁u₁ its projection on it.
    Class-agnostic: no gradient.

    SVD is no ONNX op, so u₁ comes from the graph: the Gram matrix G (M Mᵀ, or Mᵀ M when K < h·w, whichever is
    smaller) squared SQUARINGS times (rescaled each time) is u₁u₁ᵀ (or v₁v₁ᵀ) to float precision. The singular
    vector's sign is arbitrary; it is chosen so that the map correlates positively with the channels' mean
    activation s: G^(2^n) s (or M G^(2^n) Mᵀ s) ∝ u₁(u₁·s) has that sign. Then M v₁ = u₁·‖Mᵀu₁‖.
    """

    name = "eigencam"
    summary = "ReLU(projection on the 1st principal component of A) (Muhammad 2020)"
    uses_gradient = False

    def formula(self, g, t):
        k, h, w = (t.a.shape[i] for i in (t.channel_axis, *t.spatial_axes))
        if not all(isinstance(d, int) for d in (k, h, w)):
            raise OnnxplainError(f"eigencam needs layer '{t.a.name}' to have a fixed shape, not {t.a.shape}")
        a = t.a if t.channel_axis == 1 else g.Transpose(t.a, perm=[0, 3, 1, 2])
        flat = g.Reshape(a, g.ints([0, k, h * w]))                                # N×K×L
        mt = g.Sub(flat, g.reduce_mean(flat, [2], keepdims=True))                 # Mᵀ
        m = g.Transpose(mt, perm=[0, 2, 1])                                       # M, N×L×K
        s = g.unsqueeze(g.reduce_mean(flat, [1], keepdims=False), [2])            # N×L×1
        positions = h * w <= k
        p = g.MatMul(m, mt) if positions else g.MatMul(mt, m)                     # G
        for _ in range(SQUARINGS):
            p = g.Div(p, positive(g, g.reduce_max(p, [1, 2], keepdims=True)))
            p = g.MatMul(p, p)
        q = g.MatMul(p, s) if positions else g.MatMul(m, g.MatMul(p, g.MatMul(mt, s)))  # ∝ u₁(u₁·s)
        u = g.Div(q, positive(g, norm(g, q)))
        cam = g.Relu(g.Reshape(g.Mul(u, norm(g, g.MatMul(mt, u))), g.ints([0, h, w])))
        return cam, cam


def norm(g, v):
    """‖v‖ over axis 1 of N×n×1, kept as N×1×1."""
    return g.Sqrt(g.reduce_sum(g.Mul(v, v), [1], keepdims=True))


def positive(g, v):
    """v ≥ 0 raised to at least the smallest normal float: a divisor that is never 0."""
    return g.Max(v, g.const(np.finfo(np.float32).tiny, like=v))


@dataclass(frozen=True)
class FEM(CAM):
    """Feature Explanation Method (Fuad et al. 2020): Σ_k μ_k·1[A_k > μ_k + K·σ_k], μ_k and σ_k the spatial mean
    and (population) standard deviation of channel k, K = `k` (2), divided by its maximum when that is positive.
    One forward pass, no gradient, class-agnostic."""

    name = "fem"
    summary = "sum_k mean(A_k) * [A_k > mean + 2 std] (Fuad 2020)"
    uses_gradient = False
    k: float = 2.0

    def formula(self, g, t):
        mu = g.reduce_mean(t.a, t.spatial_axes, keepdims=True)
        centred = g.Sub(t.a, mu)
        sigma = g.Sqrt(g.reduce_mean(g.Mul(centred, centred), t.spatial_axes, keepdims=True))
        bright = g.cast_like(g.Greater(t.a, g.Add(mu, g.Mul(sigma, g.const(self.k, like=sigma)))), t.a)
        fem = g.reduce_sum(g.Mul(mu, bright), [t.channel_axis], keepdims=False)
        top = g.reduce_max(fem, [1, 2], keepdims=True)
        fem = g.Div(fem, g.Where(g.Greater(top, g.const(0, like=top)), top, g.const(1, like=top)))
        return fem, fem


# -- methods that score batches of passes -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Gate:
    """A canonizer (a model rewrite): the consumers of `tensor` read tensor ⊙ m instead, m made from graph input
    MASK, one row per pass; the rows broadcast against one fed `tensor` (batch 1).

    With `size`, MASK holds low-resolution maps (passes×h×w), each upsampled bilinearly to `size` and min-max
    normalised to [0, 1] in the graph (Score-CAM's masks on the image). Without, it holds one factor per channel
    (passes×K, Ablation-CAM's channel masks).
    """

    tensor: str
    channel_axis: int
    size: tuple[int, int] | None = None

    def __call__(self, proto):
        graph = gs.import_onnx(proto)
        g = Builder(graph, opset_of(proto), "gate")
        x = graph.tensors()[self.tensor]
        spatial = [a for a in (1, 2, 3) if a != self.channel_axis]
        fed = gs.Variable(MASK, dtype=np.float32, shape=["passes", "h", "w"] if self.size else ["passes", "k"])
        if self.size:
            m = upsample(g, fed, self.size)
            low = g.reduce("ReduceMin", m, [1, 2], keepdims=True)
            m = g.unsqueeze(g.Div(g.Sub(m, low), g.Sub(g.reduce_max(m, [1, 2], keepdims=True), low)),
                            [self.channel_axis])
        else:
            m = g.unsqueeze(fed, spatial)
        gated = g.Mul(x, m)
        for node in list(x.outputs):
            for i, inp in enumerate(node.inputs):
                if inp is x and node is not gated.inputs[0]:
                    node.inputs[i] = gated
        graph.inputs.append(fed)
        toposort(graph)
        return gs.export_onnx(graph, do_type_check=False)


class PassesCAM(CAM):
    """ReLU(Σ_k w_k A_k) with w from passes of the model per channel: `passes` gives, per image (x and its A, batch
    1, in the model's layout), each channel's scores of every class (K×classes); `weigh` turns them into w for class
    c. An image repeated on consecutive rows (one row per target) reuses its passes."""

    uses_gradient = False
    one_graph = False

    def model_passes(self, size):
        return None  # one per channel of the layer

    def passes(self, model, layer, x, a, batch_size) -> np.ndarray:
        raise NotImplementedError

    def weigh(self, scores: np.ndarray, y: float) -> np.ndarray:
        raise NotImplementedError

    def run(self, model, inputs, targets, layer, batch_size):
        if model.grid_of(layer):
            raise OnnxplainError(f"{self.name} masks the channels of an image-shaped layer; '{layer}' holds a vision "
                                 "transformer's tokens: use gradcam, gradcampp, xgradcam, hirescam, layercam, "
                                 "eigencam or fem there")
        sess = model.session(Request(expose=(layer, model.score), keep_outputs=False))
        a, logits = sess.run([layer, model.score], {model.input: inputs}, batch_size)
        used = np.where(targets < 0, logits.argmax(axis=1), targets)
        chw = np.moveaxis(a, model.channel_axis_of(layer), 1)
        weights = np.zeros(chw.shape[:2])
        for i in range(len(inputs)):
            if i == 0 or not np.array_equal(inputs[i], inputs[i - 1]):
                scores = self.passes(model, layer, inputs[i:i + 1], a[i:i + 1], batch_size)
            weights[i] = self.weigh(scores[:, used[i]], float(logits[i, used[i]]))
        cam = np.maximum(np.einsum("nk,nkhw->nhw", weights, chw), 0).astype(np.float32)
        (h, w), (big_h, big_w) = cam.shape[1:], model.input_size
        maps = np.einsum("hi,nij,wj->nhw", bilinear_weights(h, big_h), cam, bilinear_weights(w, big_w))
        return cam, maps, logits, used


def batched(sess, output: str, fixed: dict, rows: dict, batch_size: int) -> np.ndarray:
    """`output` for the rows of `rows` fed batch_size at a time, each batch beside the same `fixed` feeds."""
    n = len(next(iter(rows.values())))
    return np.concatenate([sess.run([output], {**fixed, **{k: v[i:i + batch_size] for k, v in rows.items()}})[0]
                           for i in range(0, n, batch_size)])


@dataclass(frozen=True)
class ScoreCAM(PassesCAM):
    """w_k = softmax(f(x ⊙ m_k))_c, m_k = A_k upsampled bilinearly to the input and min-max normalised (Wang et al.
    2020). Channels constant over space give no mask and w_k = 0, as in the authors' code.

    The masked inputs run batch_size at a time through one session whose graph masks the fed image itself (the
    `Gate` rewrite), so only the low-resolution maps are fed per pass. channels: score only that many channels, those
    of largest spatial variance (as Faster Score-CAM selects them); the others get w_k = 0. Default: all.
    """

    name = "scorecam"
    summary = "channels' maps as input masks, weighted by the masked class probability (Wang 2020)"
    channels: int | None = None

    def __post_init__(self):
        if self.channels is not None and (not isinstance(self.channels, int) or self.channels < 1):
            raise OnnxplainError("scorecam: channels must be a whole number, at least 1")

    def model_passes(self, size):
        return None if self.channels is None else self.channels + 1

    def passes(self, model, layer, x, a, batch_size):
        maps = np.moveaxis(a[0], model.channel_axis_of(layer) - 1, 0)                  # K×h×w
        spread = maps.var(axis=(1, 2))
        chosen = np.flatnonzero(maps.max(axis=(1, 2)) > maps.min(axis=(1, 2)))
        chosen = chosen[np.argsort(-spread[chosen], kind="stable")][:self.channels]
        gate = Gate(model.input, model.channel_axis, model.input_size)
        sess = model.session(Request(expose=(model.score,), keep_outputs=False, transform=gate))
        scores = np.zeros((len(maps), model.num_classes))
        if len(chosen):
            y = batched(sess, model.score, {model.input: x}, {MASK: maps[chosen]}, batch_size)
            scores[chosen] = model.probabilities(y.astype(np.float64))
        return scores

    def weigh(self, scores, y):
        return scores


@dataclass(frozen=True)
class AblationCAM(PassesCAM):
    """w_k = (y_c − y_c^k) / y_c, y_c^k the score with channel k of the layer set to zero (Desai & Ramaswamy 2020).

    The passes run only the graph above the layer (cut there, fed the layer's activation), which multiplies that
    activation by a fed channel mask (the `Gate` rewrite): batch_size ablated channels per run.
    """

    name = "ablationcam"
    summary = "score drop when each channel is zeroed, (y_c - y_c^k) / y_c (Desai 2020)"

    def passes(self, model, layer, x, a, batch_size):
        sess = model.session(Request(expose=(model.score,), keep_outputs=False, cut=(layer,),
                                     transform=Gate(layer, model.channel_axis_of(layer))))
        k = a.shape[model.channel_axis_of(layer)]
        keep = 1 - np.eye(k, dtype=np.float32)
        return batched(sess, model.score, {layer: a}, {MASK: keep}, batch_size).astype(np.float64)

    def weigh(self, scores, y):
        return (y - scores) / y
