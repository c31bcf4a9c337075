"""Class scores shaped N×C×1×1 (Caffe-style heads: a Conv and global pooling, or a Softmax over channels, with no
Flatten) become N×C: the heads, targets and methods read a 2-D N×classes score.

A float output of rank 4 whose dims besides the batch are 1 but one (N×C×1×1, or N×1×1×C from an NHWC head) gets a
Flatten after it, under its own name. When a Softmax over the class axis makes it (through Identities), the Flatten
goes before the Softmax instead, so that its input, the logits, is N×C too.
"""
from __future__ import annotations

import onnx
from onnx import helper

from ..protos import FLOATS, dims, past_identities, producers, shown
from ..rewrite.graph import opset_of
from . import register, writable


@register("head")
def flatten_heads(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """The pass: every N×C×1×1-like float output flattened to N×C, noted as "flattened output 'prob' [N, C, 1, 1]"."""
    heads = [o for o in model.graph.output if _class_axis(o) is not None]
    if not heads:
        return model, None
    model = writable(model)
    notes, flat = [], {}
    for out in sorted((o for o in model.graph.output if _class_axis(o) is not None),
                      key=lambda o: _softmax(model, o)[0] is not None):
        notes.append(f"'{out.name}' {shown(out)} flattened to N×classes")
        _flatten(model, out, flat)
    return model, "; ".join(notes)


def _class_axis(value_info) -> int | None:
    """The axis holding the classes of a float N×C×1×1 or N×1×1×C output, None for any other output."""
    t = value_info.type.tensor_type
    if not value_info.type.HasField("tensor_type") or t.elem_type not in FLOATS or not t.HasField("shape"):
        return None
    shape = dims(value_info)
    if len(shape) != 4:
        return None
    others = [axis for axis in (1, 2, 3) if shape[axis] != 1]
    return others[0] if len(others) == 1 else None


def _softmax(model: onnx.ModelProto, out):
    """The Softmax over the class axis that makes output `out` through Identities (None if there is none), and the
    names on the way."""
    node, chain = past_identities(producers(model.graph), out.name)
    found = node is not None and node.op_type == "Softmax" and _over(node, _class_axis(out), opset_of(model))
    return (node if found else None), set(chain)


def _reshaped_back(model: onnx.ModelProto, out):
    """The Reshape that makes output `out` (through Identities) from a Softmax over a Flatten(axis=1) (the form onnx's
    version converter gives an opset < 13 Softmax over an N×C×1×1 head), or None."""
    producer = producers(model.graph)
    node = past_identities(producer, out.name)[0]
    softmax = producer.get(node.input[0]) if node is not None and node.op_type == "Reshape" else None
    flat = producer.get(softmax.input[0]) if softmax is not None and softmax.op_type == "Softmax" else None
    axis = next((a.i for a in flat.attribute if a.name == "axis"), 1) if flat is not None else None
    return node if flat is not None and flat.op_type == "Flatten" and axis == 1 else None


def _flatten(model: onnx.ModelProto, out, flat: dict) -> None:
    """Insert the Flatten for `out` (before its Softmax over classes, if there is one) and declare it N×C; `flat`
    maps the 4-D tensors flattened so far to their N×C names."""
    graph, axis = model.graph, _class_axis(out)
    softmax, chain = _softmax(model, out)
    back = _reshaped_back(model, out)
    if back is not None:  # Flatten → Softmax → Reshape to 4-D: the Softmax's N×C output is the score
        back.op_type = "Identity"
        del back.input[1:]
    elif softmax is not None:
        source = softmax.input[0]
        _set_axis(softmax, 1)
        if source not in flat:  # (an output flattened before: its N×C tensor is the logits)
            flat[source] = f"{source}__flat"
            graph.node.insert(list(graph.node).index(softmax), helper.make_node(
                "Flatten", [source], [flat[source]], axis=1, name=f"{source}/onnxplain_flatten"))
        softmax.input[0] = flat[source]
    else:
        inner = f"{out.name}__nc11"
        for n in graph.node:
            n.input[:] = [inner if i == out.name else i for i in n.input]
            n.output[:] = [inner if o == out.name else o for o in n.output]
        graph.node.append(helper.make_node("Flatten", [inner], [out.name], axis=1,
                                           name=f"{out.name}/onnxplain_flatten"))
        flat[inner] = out.name
    declared = dims(out)
    shape = [declared[0], declared[axis]]
    del out.type.tensor_type.shape.dim[:]
    for d in shape:
        entry = out.type.tensor_type.shape.dim.add()
        if isinstance(d, int):
            entry.dim_value = d
        elif d:
            entry.dim_param = d
    for v in [v for v in graph.value_info if v.name in chain]:  # re-inferred as N×C
        graph.value_info.remove(v)


def _over(softmax, class_axis: int, opset: int) -> bool:
    """Whether a Softmax on the rank-4 head normalises over exactly its class axis (before opset 13 Softmax flattens
    the axes from `axis` on, which come to the class axis alone when `axis` is 1..class axis, the others being 1)."""
    axis = next((a.i for a in softmax.attribute if a.name == "axis"), 1 if opset < 13 else -1) % 4
    return 1 <= axis <= class_axis if opset < 13 else axis == class_axis


def _set_axis(node, axis: int) -> None:
    del node.attribute[:]
    node.attribute.append(helper.make_attribute("axis", axis))
