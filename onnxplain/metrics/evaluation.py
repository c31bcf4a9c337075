"""`evaluate(model, x, methods)`: explain with each method (or take given maps) and return every metric per image."""
from __future__ import annotations

import reprlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import OnnxplainError
from ..explain import as_batch, as_targets, explain
from ..limits import whole
from ..targets import is_target, resolve
from .faithfulness import BETTER, METRICS, confidence, deletion, insertion


def evaluate(model, x, methods=("rise",), target=None, *, metrics=METRICS, step: int | None = None,
             deletion_baseline: str | float = "zero", insertion_baseline: str | float = "blur",
             score="probability", batch_size: int | None = None, params: Mapping | None = None,
             progress=None) -> dict[str, dict[str, np.ndarray]]:
    """Explain `x` with each method and score its maps: {method: {metric: value per image}}.

    target: as `explain`'s: classes, or target objects (`onnxplain.targets`: a box, a region, an output element),
    whose head's score the metrics read.

    methods: method names, or a mapping {label: maps N×H×W} to score maps made elsewhere.
    params: {method: {parameter: value}} passed to `explain`.
    progress: progress(done, total) for every stream of model calls (explanations and metrics).
    """
    listed = isinstance(metrics, (list, tuple))
    if not listed or any(m not in METRICS for m in metrics):
        unknown = next(m for m in metrics if m not in METRICS) if listed else metrics
        raise OnnxplainError(f"unknown metric {reprlib.repr(unknown)} (metrics is a list of: {', '.join(METRICS)})")
    if isinstance(methods, str):
        methods = [methods]
    if not isinstance(methods, (list, tuple, Mapping)):
        raise OnnxplainError(f"methods must be method names or a mapping of maps, not {reprlib.repr(methods)}")
    if not (params is None or isinstance(params, Mapping) and all(isinstance(v, Mapping) for v in params.values())):
        raise OnnxplainError(f"params must map each method to its parameters, not {reprlib.repr(params)}")
    size = model.batch_size if batch_size is None else whole("batch_size", batch_size)
    if isinstance(x, (list, tuple)) and len(x) > size and all(isinstance(p, (str, Path)) for p in x):
        per_image = (list(target) if isinstance(target, (list, tuple)) else [target] * len(x)) if is_target(target) \
            else as_targets(model, target, len(x))
        return _in_batches(model, x, methods, per_image, size, metrics=metrics, step=step,
                           deletion_baseline=deletion_baseline, insertion_baseline=insertion_baseline,
                           score=score, params=params, progress=progress)
    inputs, _ = as_batch(model, x)
    model, target = resolve(model.for_batch(inputs), target, inputs)  # a target object's head and indices
    targets = as_targets(model, target, len(inputs))
    given = dict(methods) if isinstance(methods, Mapping) else None
    options = dict(step=step, score=score, batch_size=batch_size, progress=progress)
    results = {}
    for method in (given or methods):
        if given is not None:
            maps = given[method]
        else:
            extra = dict((params or {}).get(method, {}))
            from ..methods import METHODS
            if progress is not None and method in METHODS and METHODS[method].accepts("progress"):
                extra.setdefault("progress", progress)
            e = explain(model, inputs, method, target=targets, batch_size=batch_size, **extra)
            maps, targets_used = e.maps, e.targets
        t = targets if given is not None else targets_used
        row = {}
        if "deletion" in metrics:
            row["deletion"] = deletion(model, inputs, maps, t, baseline_kind=deletion_baseline, **options)
        if "insertion" in metrics:
            row["insertion"] = insertion(model, inputs, maps, t, baseline_kind=insertion_baseline, **options)
        if "drop" in metrics or "increase" in metrics:
            drop, increase = confidence(model, inputs, maps, t, score=score, batch_size=batch_size)
            row.update({k: v for k, v in (("drop", drop), ("increase", increase)) if k in metrics})
        results[method] = row
    return results


def _in_batches(model, paths, methods, targets, size, **options) -> dict[str, dict[str, np.ndarray]]:
    """`evaluate` on a long list of image files, `size` images read and scored at a time: memory holds one batch of
    images, whatever the length of the list. Maps given for the images are split alike."""
    parts = []
    for a in range(0, len(paths), size):
        chunk = {k: np.asarray(v)[a:a + size] for k, v in methods.items()} if isinstance(methods, Mapping) else methods
        parts.append(evaluate(model, paths[a:a + size], chunk, targets[a:a + size], batch_size=size, **options))
    return {method: {name: np.concatenate([p[method][name] for p in parts]) for name in row}
            for method, row in parts[0].items()}
