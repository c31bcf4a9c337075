"""Find the tensors worth explaining at: those with spatial extent on the path from the image to the score."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import onnx

MAX_EXTRA_TOKENS = 8  # class, distillation and register tokens before the patch tokens
CHANNEL_FIRST = frozenset({  # ONNX ops whose image input and output are N×C×H×W whatever the model's input layout
    "Conv", "ConvTranspose", "BatchNormalization", "InstanceNormalization", "LRN", "MaxPool", "AveragePool", "LpPool",
    "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "DepthToSpace", "SpaceToDepth"})


KEEP_LAYOUT = frozenset({  # ops whose image output has the layout of their image inputs
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Swish",
    "Tanh", "Erf", "Gelu", "Mish", "Softplus", "Add", "Sub", "Mul", "Div", "Sum", "Max", "Min", "Mean", "Pow", "Neg",
    "Abs", "Exp", "Log", "Sqrt", "Reciprocal", "Identity", "Dropout", "Cast", "Concat", "Pad"})


def channel_first(model: onnx.ModelProto) -> frozenset[str]:
    """The tensors that are NCHW even inside an NHWC model (tf2onnx transposes the image once and computes in NCHW
    inside, where the input's layout says nothing): those a channel-first op reads as its image or writes, and those
    that layout-keeping ops (activations, residual adds, Concat) compute from them. Nodes in topological order."""
    found = set()
    for n in model.graph.node:
        if n.op_type in CHANNEL_FIRST:
            found.update((n.input[0], n.output[0]))
        elif n.op_type in KEEP_LAYOUT and any(i in found for i in n.input):
            found.update(n.output)
    return frozenset(found)


def spatial(layout: str) -> slice:
    """The height and width axes of a rank-4 tensor in `layout`."""
    return slice(2, 4) if layout == "NCHW" else slice(1, 3)


@dataclass(frozen=True)
class Tokens:
    """A vision transformer's token tensors (N×T×C, T = extra tokens + the patch grid's cells) and its patch grid,
    the size of its patch embedding's output: CAM methods read them laid back out on that grid."""

    grid: tuple[int, int]
    layers: tuple[str, ...]
    norms: tuple[str, ...]  # those that LayerNormalizations give (the blocks' inputs to attention and MLP)
    default: str            # the last of them before the last attention (pytorch-grad-cam's blocks[-1].norm1)


def find_layers(model: onnx.ModelProto, input_name: str, score: str, layout_of: Callable[[str], str]
                ) -> tuple[list[tuple[str, tuple]], Tokens | None]:
    """(name, shape) of every rank-4 float tensor with height and width > 1 between the input and the score, in
    topological order (attention maps excepted), and the token tensors if the model is a vision transformer;
    `model` has its shapes inferred (`Model.graph`); `layout_of(name)` is each tensor's layout."""
    shapes = {name: shape for name, (elem, shape) in declared(model).items() if elem == onnx.TensorProto.FLOAT}
    nodes = list(model.graph.node)
    forward = {input_name}
    for node in nodes:
        if any(i in forward for i in node.input) and node.op_type not in ("Shape", "Size"):
            forward.update(node.output)
    backward = {score}
    for node in reversed(nodes):
        if any(o in backward for o in node.output):
            backward.update(node.input)
    found, tokens, grid, counts, norms, softmax = [], [], None, set(), [], 0
    for node in nodes:
        for name in node.output:
            shape = shapes.get(name)
            if name not in forward or name not in backward or not shape:
                continue
            hw = spatial(layout_of(name))
            if len(shape) == 4 and all(d is not None and d > 1 for d in shape[hw]) and not set(shape[hw]) & counts:
                found.append((name, shape))
            if len(shape) != 3 or None in shape[1:]:
                continue
            if found and _patches(shape, *found[-1], layout_of):
                grid = grid or tuple(found[-1][1][spatial(layout_of(found[-1][0]))])
            if grid and 0 <= shape[1] - _cells(grid) <= MAX_EXTRA_TOKENS:
                tokens.append(name)
                counts.add(shape[1])  # a rank-4 tensor with T rows from here on is attention (maps, heads)
                norms += [(name, softmax)] * (node.op_type == "LayerNormalization")
        softmax += node.op_type == "Softmax" and grid is not None
    if not tokens or not softmax:  # tokens without attention: a CNN's flattened feature map
        return found, None
    before_last = [name for name, seen in norms if seen == softmax - 1] or [tokens[-1]]
    return found, Tokens(grid, tuple(tokens), tuple(name for name, _ in norms), before_last[-1])


def declared(model: onnx.ModelProto) -> dict[str, tuple[int, tuple]]:
    """Tensor name -> (element type, shape: a number per dim, None where it is symbolic) of the graph's inputs,
    value_info and outputs."""
    graph = model.graph
    return {vi.name: (vi.type.tensor_type.elem_type, tuple(d.dim_value if d.HasField("dim_value") else None
                                                            for d in vi.type.tensor_type.shape.dim))
            for vi in (*graph.input, *graph.value_info, *graph.output)}


def _cells(hw) -> int:
    return int(hw[0]) * int(hw[1])


def _patches(tokens: tuple, name: str, image: tuple, layout_of: Callable[[str], str]) -> bool:
    """Whether the rank-3 `tokens` (N×T×C) are the cells of the rank-4 tensor `name` of shape `image` as tokens,
    after up to a few extra ones."""
    layout = layout_of(name)
    channel = image[1 if layout == "NCHW" else 3]
    return tokens[2] == channel and 0 <= tokens[1] - _cells(image[spatial(layout)]) <= MAX_EXTRA_TOKENS


def default_layer(found: list[tuple[str, tuple]]) -> str | None:
    """The last tensor with spatial extent before global pooling."""
    return found[-1][0] if found else None


def block_ends(found: list[tuple[str, tuple]], layout_of: Callable[[str], str]) -> list[str]:
    """The last tensor at each spatial resolution: the ends of the convolutional blocks."""
    last = {}
    for name, shape in found:
        last[shape[spatial(layout_of(name))]] = name
    return list(last.values())


def on_every_path(model: onnx.ModelProto, input_name: str, score: str, names: list[str]) -> list[str]:
    """Those of `names` that every path from the input to the score passes through (the score is unreachable
    without them), in their given order. Nodes in topological order."""
    kept = []
    for name in names:
        reached = {input_name}
        for node in model.graph.node:
            if node.op_type not in ("Shape", "Size") and any(i in reached for i in node.input):
                reached.update(o for o in node.output if o != name)
        if score not in reached:
            kept.append(name)
    return kept


def scale_merges(model: onnx.ModelProto, found: list[tuple[str, tuple]]) -> list[tuple[tuple[str, ...], tuple]]:
    """Where a detector's scales are concatenated: each Concat without spatial extent whose inputs come each from
    one spatial tensor of `found` (through ops without spatial extent), a different one per input. Per such Concat,
    in graph order: (those tensors, each input's length along the concatenated axis, None where unknown). Those
    tensors are the last of each scale's branch, and the lengths its anchors' places in the concatenation. `model`
    has its shapes inferred (`Model.graph`)."""
    ranks = {name: shape for name, (_, shape) in declared(model).items()}
    names = {name for name, _ in found}
    last: dict[str, frozenset] = {}  # tensor -> the spatial tensors it is computed from through non-spatial ops
    merges = []
    for node in model.graph.node:
        if node.op_type in ("Shape", "Size"):
            continue
        ins = [last.get(i, frozenset()) for i in node.input]
        if (node.op_type == "Concat" and node.output[0] not in names and len(ins) >= 2
                and all(len(s) == 1 for s in ins) and len(set(ins)) == len(ins)):
            axis = next(a.i for a in node.attribute if a.name == "axis")
            dims = [ranks.get(i) for i in node.input]
            merges.append((tuple(next(iter(s)) for s in ins),
                           tuple(d[axis % len(d)] if d else None for d in dims)))
        for o in node.output:
            last[o] = frozenset({o}) if o in names else frozenset().union(*ins)
    return merges


def features_before(model: onnx.ModelProto, input_name: str, found: list[tuple[str, tuple]], end: str) -> str:
    """The features a branch ending in tensor `end` predicts from: the last tensor of `found` (in graph order) that
    every path from the input to `end` passes through and that a convolution reads; `end` itself if none."""
    read = {n.input[0] for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")}
    return ([end] + on_every_path(model, input_name, end, [n for n, _ in found if n in read and n != end]))[-1]
