"""The metric registry: every metric an audit can run, one record each, grouped as Quantus groups them
(faithfulness, randomisation, localisation, complexity, robustness) and named as Quantus names them where it has
them, so results can be compared.

A metric's `compute(case, **options)` returns one value per image of the case. What a case holds is all a metric
may use: the model, its input batch, the maps under test, the targets they explain, ground-truth masks when the
data has them, and a way to explain again (for checks that change the model or the input and compare maps).
"""
from __future__ import annotations

import reprlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import OnnxplainError
from ..explain import check_finite

GROUPS = ("faithfulness", "randomisation", "localisation", "complexity", "robustness")


@dataclass(frozen=True)
class Case:
    """A batch of N images under audit for one method.

    inputs: the model's input batch; maps: N×H×W; targets: N class indices (or the targets `explain` took);
    masks: N×H×W ground truth (non-zero on the object) or None; explain(model, inputs, targets) -> N×H×W maps of
    the same method with the same parameters, or None.
    """
    model: object
    inputs: np.ndarray
    maps: np.ndarray
    targets: np.ndarray
    masks: np.ndarray | None = None
    explain: Callable | None = None


@dataclass(frozen=True)
class Metric:
    """name: Quantus-style snake_case; better: "higher" or "lower"; paper: who defined it; needs: "masks" and/or
    "explain", what a case must carry; compute(case, **options) -> N values, or with `part`, {part: N values} for
    several metrics that one computation gives (drop and increase: one forward pass of the explanation images),
    this metric being its `part`."""
    name: str
    group: str
    better: str
    paper: str
    compute: Callable[..., np.ndarray]
    needs: tuple[str, ...] = ()
    part: str | None = None

    def __call__(self, case: Case, *, memo: dict | None = None, **options) -> np.ndarray:
        """The metric's N values. memo: a dict kept for one case, where a computation that gives several metrics
        (`part`) leaves its result for the others, run once with the same options."""
        missing = [n for n in self.needs if getattr(case, n) is None]
        if missing:
            raise OnnxplainError(f"metric {self.name} needs {' and '.join(missing)}"
                                 + (" (ground-truth boxes or masks in the data)" if "masks" in missing else ""))
        if self.part is None:
            return np.asarray(self.compute(case, **options), np.float64)
        memo = {} if memo is None else memo
        key = (self.compute, self.needs, repr(sorted(options.items())))
        if key not in memo:
            memo[key] = self.compute(case, **options)
        return np.asarray(memo[key][self.part], np.float64)


REGISTRY: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    if metric.group not in GROUPS or metric.better not in ("higher", "lower"):
        raise ValueError(f"metric {metric.name}: group {metric.group!r} or direction {metric.better!r} unknown")
    REGISTRY[metric.name] = metric
    return metric


def as_maps(maps, shape: tuple[int, ...] | None = None, like: str = "the images") -> np.ndarray:
    """Maps as float64 N×H×W (one H×W map is one image), finite, of `shape` when given (that of `like`), or one line
    saying why not."""
    try:
        maps = np.asarray(maps, np.float64)
    except (TypeError, ValueError):
        raise OnnxplainError(f"maps must be an array of numbers, N×H×W, not {reprlib.repr(maps)}") from None
    maps = maps[None] if maps.ndim == 2 else maps
    if maps.ndim != 3 or shape is not None and maps.shape != tuple(shape):
        raise OnnxplainError(f"maps have shape {maps.shape}; " + (f"they need the same shape as {like}, "
                                                                  f"{tuple(shape)}, N×H×W" if shape is not None
                                                                  else "give N×H×W or one H×W map"))
    check_finite(maps, "map")
    return maps
