"""Randomisation sanity checks: does the map change when what it claims to explain changes?

- Model parameter randomisation test, MPRT (Adebayo et al. 2018), as Quantus's `MPRT` runs it by default
  (layer_order="top_down"): the layers' parameters are re-drawn one layer more at a time, from the output back
  (cascading), and each map of the randomised model is compared with the original map. Done on the loaded ONNX
  model by rewriting its initializers (`Model.with_initializers`); the original model is never changed.
- Random logit (Sixt et al. 2020), as Quantus's `RandomLogit`: the map of the explained class against the map of a
  uniformly random other class.

A method whose maps survive the randomisation (they stay similar to the original ones) does not explain the model
and fails the check: `CHECKS` gives each check's verdict for the audit's sanity section.
"""
from __future__ import annotations

import reprlib
import zlib

import numpy as np
import onnx

from ..errors import OnnxplainError
from ..limits import whole
from .base import Metric, register
from .similarity import spearman, ssim

# Re-drawn as PyTorch's reset_parameters() does, which Quantus calls on every layer (its default): weights and biases
# uniform in ±1/√fan_in (kaiming_uniform with a = √5), fan_in the weight's size(1) × its kernel's elements.
DRAWN = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Normalisations are reset, not drawn (PyTorch: weight 1, bias 0, running mean 0, running variance 1), per input.
RESET = {"BatchNormalization": (None, 1.0, 0.0, 0.0, 1.0), "LayerNormalization": (None, 1.0, 0.0),
         "InstanceNormalization": (None, 1.0, 0.0)}
MPRT_THRESHOLD = 0.5          # |mean Spearman| (of |maps|) at full randomisation above it: the maps survive, "fail"
RANDOM_LOGIT_THRESHOLD = 0.5  # |mean SSIM| to another class's map above it: the map ignores the class, "fail"


def parameter_layers(model) -> list[tuple[str, tuple[str, ...]]]:
    """(layer, its parameter initializers) for each layer whose parameters are float32 initializers, in graph order
    from the output back: Conv, ConvTranspose, Gemm and MatMul (with the Add of its bias when the MatMul's only
    consumer is one), and the normalisations. Parameters held otherwise (quantised, behind a Cast) are left."""
    return [(name, params) for name, _, params in _layers(model.bare or model.proto)]


def _layers(proto: onnx.ModelProto) -> list[tuple[str, onnx.NodeProto, tuple[str, ...]]]:
    floats = {t.name: t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    consumers: dict[str, list] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    layers, taken = [], set()
    for i, node in enumerate(proto.graph.node):
        if node.op_type not in DRAWN and node.op_type not in RESET:
            continue
        params = [n for n in node.input if n in floats and n not in taken]
        if node.op_type in DRAWN and not any(len(floats[n].dims) >= 2 for n in params):
            continue                                       # no weight: a product of two activations
        after = consumers.get(node.output[0], [])
        if node.op_type == "MatMul" and len(after) == 1 and after[0].op_type == "Add":
            params += [n for n in after[0].input if n in floats and n not in taken and len(floats[n].dims) <= 1]
        if params:
            taken.update(params)
            layers.append((node.name or f"{node.op_type} {i}", node, tuple(params)))
    return layers[::-1]


def _redrawn(model, count: int, seed: int) -> dict[str, np.ndarray]:
    """New values of the parameters of the first `count` layers of `parameter_layers` (the top ones); layer k's are
    drawn from default_rng([seed, k]), the same at every step of the cascade."""
    proto = model.bare or model.proto
    shapes = {t.name: tuple(t.dims) for t in proto.graph.initializer}
    values = {}
    for k, (_, node, params) in enumerate(_layers(proto)[:count]):
        if node.op_type in RESET:
            fills = RESET[node.op_type]
            values.update({n: np.full(shapes[n], fills[list(node.input).index(n)], np.float32) for n in params})
            continue
        weight = next(n for n in params if len(shapes[n]) >= 2)
        bound = np.float32(1 / np.sqrt(_fan_in(node, weight, shapes[weight])))
        rng = np.random.default_rng([seed, k])
        values.update({n: rng.uniform(-1, 1, shapes[n]).astype(np.float32) * bound for n in params})
    return values


def _fan_in(node: onnx.NodeProto, weight: str, shape: tuple) -> int:
    """PyTorch's fan_in of a layer's weight: a Conv's size(1) × kernel (in_channels/groups × kernel; a ConvTranspose
    its out_channels/groups alike), a Gemm's or MatMul's input features (the weight's axis that meets the input)."""
    if node.op_type in ("Conv", "ConvTranspose"):
        return int(np.prod(shape[1:]))
    second = node.input[1] == weight                    # x·W (W second) or W·x (W first)
    if node.op_type == "Gemm":
        flag = next((a.i for a in node.attribute if a.name == ("transB" if second else "transA")), 0)
        second = second != bool(flag)                   # a transposed weight meets the input on its other axis
    return shape[-2] if second else shape[-1]


def randomised(model, count: int | None = None, seed: int = 42):
    """`model` with the parameters of its top `count` layers re-drawn (all by default), kept by the model for later
    batches (`Model.variant`)."""
    total = len(parameter_layers(model))
    if total == 0:
        raise OnnxplainError("the model has no layer whose weights are float32 initializers to randomise "
                             "(Conv, Gemm, MatMul); the parameter randomisation test cannot run on it")
    count, seed = (total if count is None else whole("count", count, 1, total)), whole("seed", seed, 0)
    return model.variant(("randomised", count, seed), lambda: model.with_initializers(_redrawn(model, count, seed)))


def _prepared(maps, absolute: bool) -> np.ndarray:
    """Maps as Quantus compares them: absolute values when `absolute`, each divided by its largest |value|
    (normalise_by_max; an all-zero map stays)."""
    maps = np.asarray(maps, np.float64)
    maps = np.abs(maps) if absolute else maps
    top = np.abs(maps).max(axis=(-2, -1), keepdims=True)
    return maps / np.where(top > 0, top, 1)


SIMILARITY = {"spearman": spearman, "ssim": ssim}


def _measure(similarity: str):
    if similarity not in SIMILARITY:
        raise OnnxplainError(f"similarity must be one of {', '.join(SIMILARITY)}, not {similarity!r}")
    return SIMILARITY[similarity]


def _similar(a, b, measure, absolute: bool) -> np.ndarray:
    return np.array([measure(x, y) for x, y in zip(_prepared(a, absolute), _prepared(b, absolute))])


def _explained(case, model, targets) -> np.ndarray:
    maps = np.asarray(case.explain(model, case.inputs, targets), np.float64)
    if maps.shape != np.shape(case.maps):
        raise OnnxplainError(f"re-explaining gave maps of shape {maps.shape}, not the case's {np.shape(case.maps)}")
    return maps


def mprt(case, *, seed: int = 42, similarity: str = "spearman") -> np.ndarray:
    """The MPRT's per-image score: the similarity of each map to the map of the fully randomised model (every layer
    re-drawn; Quantus's MPRT with return_last_correlation=True), by Spearman's rank correlation (default, Quantus's)
    or SSIM of the maps' absolute values, each divided by its maximum (Quantus's abs=True, normalise=True). Lower is
    better: near 0 for a map that depends on the weights, near 1 for one that does not."""
    measure = _measure(similarity)
    maps = _explained(case, randomised(case.model, seed=seed), case.targets)
    return _similar(case.maps, maps, measure, absolute=True)


def mprt_curves(case, *, seed: int = 42, layers: int | None = None) -> dict:
    """The cascade: {"layers": names top first, "spearman", "ssim": N×L}, column k comparing each map with the map
    of the model whose top k + 1 layers are re-drawn (`layers` limits L; default every layer, as Quantus)."""
    names = [name for name, _ in parameter_layers(case.model)]
    steps = len(names) if layers is None else min(whole("layers", layers), len(names))
    spear, struct = np.zeros((len(case.maps), steps)), np.zeros((len(case.maps), steps))
    for k in range(steps):
        maps = _explained(case, randomised(case.model, k + 1, seed), case.targets)
        spear[:, k], struct[:, k] = (_similar(case.maps, maps, s, absolute=True) for s in (spearman, ssim))
    return {"layers": names[:steps], "spearman": spear, "ssim": struct}


def other_classes(inputs, targets, classes: int, seed: int = 42) -> np.ndarray:
    """For each image, a class other than its target drawn uniformly, from default_rng([seed, CRC-32 of the image's
    input bytes]): an image gets the same class whatever batch it is in."""
    targets, seed = np.asarray(targets), whole("seed", seed, 0)
    if classes < 2 or targets.ndim != 1 or not ((targets >= 0) & (targets < classes)).all():
        raise OnnxplainError(f"random_logit needs one class per image among {classes} (at least 2), not "
                             f"{reprlib.repr(targets.tolist())}")
    draws = np.array([np.random.default_rng([seed, zlib.crc32(np.ascontiguousarray(x).tobytes())]).integers(classes - 1)
                      for x in inputs])
    return draws + (draws >= targets)


def random_logit(case, *, seed: int = 42, similarity: str = "ssim") -> np.ndarray:
    """Random logit (Sixt et al. 2020) per image, as Quantus's RandomLogit with its defaults: the SSIM (or Spearman)
    between the map of the target and the map of a uniformly random other class (`other_classes`), each map divided
    by its largest |value| (no absolute value). Lower is better."""
    measure = _measure(similarity)
    others = other_classes(case.inputs, case.targets, case.model.num_classes, seed)
    return _similar(case.maps, _explained(case, case.model, others), measure, absolute=False)


def _means(columns) -> list[float | None]:
    """The mean of each column's defined values (NaN: a constant map, no order to compare); None where none is (JSON
    has no NaN)."""
    kept = [np.asarray(c)[np.isfinite(c)] for c in columns]
    return [float(c.mean()) if c.size else None for c in kept]


def _threshold(threshold) -> float:
    if not (isinstance(threshold, (int, float, np.number)) and 0 <= threshold <= 1):
        raise OnnxplainError(f"threshold must be a similarity from 0 to 1, not {threshold!r}")
    return float(threshold)


def _verdict(value: float | None, threshold: float, what: str) -> tuple[str, str]:
    if value is None:
        return "fail", f"{what} is undefined: the maps compared are constant, nothing shows they depend on it"
    if abs(value) > threshold:
        return "fail", f"{what} is {value:.3f}, beyond ±{threshold:g}: the maps survive"
    return "pass", f"{what} is {value:.3f}, within ±{threshold:g}"


def mprt_check(case, *, seed: int = 42, layers: int | None = None, threshold: float = MPRT_THRESHOLD) -> dict:
    """The audit's sanity entry for the MPRT: the cascade's mean similarity per layer, and "fail" when the mean
    Spearman at the last step (every layer re-drawn, unless `layers` stops earlier) exceeds `threshold` in absolute
    value. 0.5 by default: the ranks then share a quarter of their variance (ρ²) with the original; on the shapes
    model the gradient methods' maps end at 0.04-0.31 and maps that ignore the weights at 1.0 (README, Metrics)."""
    threshold = _threshold(threshold)
    curves = mprt_curves(case, seed=seed, layers=layers)
    spear, struct = _means(curves["spearman"].T), _means(curves["ssim"].T)
    verdict, reason = _verdict(spear[-1], threshold, f"the mean Spearman after randomising {len(spear)} layers")
    return {"verdict": verdict, "reason": reason, "layers": curves["layers"], "spearman": spear, "ssim": struct}


def random_logit_check(case, *, seed: int = 42, threshold: float = RANDOM_LOGIT_THRESHOLD) -> dict:
    """The audit's sanity entry for the random-logit test: "fail" when the mean SSIM to another class's map exceeds
    `threshold` in absolute value (the map hardly depends on the class); its mean Spearman is reported beside it."""
    threshold = _threshold(threshold)
    others = _explained(case, case.model, other_classes(case.inputs, case.targets, case.model.num_classes, seed))
    spear, struct = (_means([_similar(case.maps, others, s, absolute=False)]) for s in (spearman, ssim))
    verdict, reason = _verdict(struct[0], threshold, "the mean SSIM to a random other class's map")
    return {"verdict": verdict, "reason": reason, "layers": [], "spearman": spear, "ssim": struct}


CHECKS = {"mprt": mprt_check, "random_logit": random_logit_check}

register(Metric("mprt", "randomisation", "lower", "Adebayo et al. 2018 (Sanity checks for saliency maps)", mprt,
                needs=("explain",)))
register(Metric("random_logit", "randomisation", "lower", "Sixt et al. 2020 (When explanations lie)", random_logit,
                needs=("explain",)))
