"""THE per-batch function of an audit, shared by the local driver and cluster engines: `audit_batch(model, records,
plan) -> rows`, one row per (image, method). It reads nothing but the records' files and writes nothing: the maps and
pictures to save travel in each row's "files", which `results.write_rows` writes."""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field

import numpy as np

from .. import methods as method_registry
from ..errors import OnnxplainError, first_line
from ..explain import _explain, forward, warn_constant
from ..metrics import CHECKS, REGISTRY, Case
from ..preprocess import Photo, prepare
from ..render import small
from .data import Record, ground_truth

TARGETS = ("label", "top1")
CHECKED = 8  # images whose scores `constant` compares


@dataclass(frozen=True)
class Plan:
    """What an audit runs on each batch: methods {name: parameters}, metrics {name: options}, the target ("label":
    an image's label when it has one, else its top-1 class; "top1"), the seed of the summary's bootstrap, the model
    batch size, the long side of the pictures saved, the model passes per image that a metric may spend explaining
    again (robustness and randomisation metrics re-explain; see `_again`), and the images the sanity checks run on
    (`sanity_batch`)."""
    methods: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    target: str = "label"
    seed: int = 0
    batch_size: int = 16
    side: int = 256
    reexplain_passes: int = 20_000
    sanity_images: int = 2


@dataclass
class Batch:
    """A batch's images as read: the records that could be read, their photos and ground-truth masks (None where a
    record has none), and (record, reason) for those that could not."""
    records: list[Record]
    photos: list[Photo]
    masks: list[np.ndarray | None]
    failed: list[tuple[Record, str]]


def read(preprocessing, records: list[Record]) -> Batch:
    """Read and prepare a batch's images and masks; an image (or mask) that cannot be read is set aside with its
    one-line reason."""
    batch = Batch([], [], [], [])
    for r in records:
        try:
            photo = prepare(r.file, preprocessing)
            mask = ground_truth(r, photo, preprocessing)
        except OnnxplainError as exc:
            batch.failed.append((r, first_line(exc)))
            continue
        batch.records.append(r)
        batch.photos.append(photo)
        batch.masks.append(mask)
    return batch


def audit_batch(model, records: list[Record], plan: Plan) -> list[dict]:
    """Explain a batch of records with every method of the plan and score the maps with every metric of it: one row
    per (image, method), in record then method order (see docs of the audit output, per_image.jsonl). Pure: the same
    records and plan give the same rows (but for "seconds")."""
    return score(model, read(model.preprocessing, records), plan)


def _row(r: Record, method: str, **fields) -> dict:
    return {"id": r.id, "path": r.path, "label": r.label, "label_name": r.label_name, "predicted": None,
            "predicted_name": None, "score": None, "target": None, "method": method, "metrics": {},
            "metric_errors": {}, "map": None, "error": None, "seconds": 0.0, "files": {}, **fields}


def _predicted(model, batch: Batch, plan: Plan) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The batch's inputs, class probabilities, top-1 classes and targets (the plan's: label or top-1)."""
    inputs = np.stack([p.input for p in batch.photos])
    probabilities = model.probabilities(forward(model, inputs, plan.batch_size).astype(np.float64))
    predicted = probabilities.argmax(axis=1)
    targets = np.array([r.label if plan.target == "label" and r.label is not None else int(c)
                        for r, c in zip(batch.records, predicted)], np.int64)
    return inputs, probabilities, predicted, targets


def constant(model, records: list[Record], plan: Plan) -> str | None:
    """Why the model's scores depend neither on the class nor on the image (`explain.constant_scores`), judged on
    the first `CHECKED` records, said as a warning; None where they do, or none of them could be read."""
    batch = read(model.preprocessing, records[:CHECKED])
    if not batch.records:
        return None
    inputs = np.stack([p.input for p in batch.photos])
    return warn_constant(model, inputs, forward(model, inputs, plan.batch_size))


def score(model, batch: Batch, plan: Plan) -> list[dict]:
    """`audit_batch` on a batch `read` made."""
    rows = [_row(r, method, error=reason) for r, reason in batch.failed for method in plan.methods]
    if not batch.records:
        return rows
    inputs, probabilities, predicted, targets = _predicted(model, batch, plan)
    truth = [i for i, m in enumerate(batch.masks) if m is not None]
    base = [dict(predicted=int(c), predicted_name=model.labels[c] if model.labels else None,
                 score=float(probabilities[i, c]), target=int(t))
            for i, (c, t) in enumerate(zip(predicted, targets))]
    per_image = {r.id: [] for r in batch.records}
    for name, params in plan.methods.items():
        method = method_registry.get(name, **params)
        start = time.perf_counter()
        try:
            e = _explain(model, inputs, batch.photos, method, targets, None, plan.batch_size)
        except OnnxplainError as exc:
            share = (time.perf_counter() - start) / len(inputs)
            for r, b in zip(batch.records, base):
                per_image[r.id].append(_row(r, name, **b, error=first_line(exc), seconds=share))
            continue
        values, errors = _metrics(model, inputs, e, batch.masks, truth, method, plan)
        share = (time.perf_counter() - start) / len(inputs)
        for i, (r, b) in enumerate(zip(batch.records, base)):
            picture, shown = small(e, i, plan.side)
            files = {f"maps/{r.id}/{name}.png": shown, f"maps/{r.id}/{name}.npy": e.maps[i]}
            if not per_image[r.id]:
                files[f"maps/{r.id}/image.png"] = picture
            per_image[r.id].append(_row(r, name, **b, metrics={k: v[i] for k, v in values.items()},
                                        metric_errors=errors, map=f"maps/{r.id}/{name}.png", seconds=share,
                                        files=files))
    return rows + [row for r in batch.records for row in per_image[r.id]]


def _again(method, size, images: int, plan: Plan, budget: int | None = None):
    """Case.explain for one metric on `images` images: the method's maps of other inputs, targets or model, refused
    in one line before a call would take the metric past `budget` (default `plan.reexplain_passes`) model passes per
    image (counted
    from the method's passes per image, 1000 where they depend on the model): a metric that re-explains many times
    (max-sensitivity's samples) with a costly method (RISE: 4001 passes per map) would run for hours."""
    passes = method.model_passes(size) or 1000
    budget = plan.reexplain_passes if budget is None else budget
    spent = [0]

    def again(model, inputs, targets):
        spent[0] += len(inputs) * passes
        if spent[0] > budget * images:
            raise OnnxplainError(f"not run: explaining again with {method.name} ({passes} model passes per image) "
                                 f"would take it past {budget} model passes per image (raise --reexplain-passes "
                                 f"to run it)")
        return _explain(model, inputs, None, method, targets, None, plan.batch_size).maps
    return again


def _metrics(model, inputs, e, masks, truth, method, plan) -> tuple[dict, dict]:
    """{metric: value per image (None where it does not apply or is not finite)} and {metric: one-line reason} for
    those that failed on this batch. Metrics needing masks run on the images that have them; metrics that one
    computation gives (drop and increase) share it."""
    values, errors, memo = {}, {}, {}
    n = len(inputs)
    for name, options in plan.metrics.items():
        metric = REGISTRY[name]
        chosen = truth if "masks" in metric.needs else list(range(n))
        values[name] = [None] * n
        if not chosen:
            continue
        case = Case(model, inputs[chosen], e.maps[chosen], e.targets[chosen],
                    np.stack([masks[i] for i in chosen]) if "masks" in metric.needs else None,
                    _again(method, model.input_size, len(chosen), plan))
        try:
            found = metric(case, memo=memo, **options)
        except OnnxplainError as exc:
            errors[name] = first_line(exc)
            continue
        for i, v in zip(chosen, found):
            values[name][i] = float(v) if np.isfinite(v) else None
    return values, errors


def sanity_batch(model, records: list[Record], plan: Plan) -> dict:
    """The randomisation checks (`metrics.CHECKS`) that the plan's metrics name, for every method, on one batch of
    records: {method: {check: entry}}, the entry as the check gives it (verdict, reason, per-layer similarities), or
    a null verdict and the one-line reason where it could not run. The parameter randomisation cascade (top layer
    first) explains the batch again once per layer: it stops after the layers that `plan.reexplain_passes` pays for
    (at least one). A method that fails on the model has no entry (its status says why)."""
    checks = [c for c in plan.metrics if c in CHECKS]
    batch = read(model.preprocessing, records) if checks else None
    if batch is None or not batch.records:
        return {}
    inputs, _, _, targets = _predicted(model, batch, plan)
    out = {}
    for name, params in plan.methods.items():
        method = method_registry.get(name, **params)
        try:
            e = _explain(model, inputs, batch.photos, method, targets, None, plan.batch_size)
        except OnnxplainError:
            continue
        passes = method.model_passes(model.input_size) or 1000
        out[name] = {}
        for check in checks:
            run = CHECKS[check]
            accepted = inspect.signature(run).parameters
            options = {k: v for k, v in plan.metrics[check].items() if k in accepted}
            if "layers" in accepted:
                options.setdefault("layers", max(1, plan.reexplain_passes // passes))
            case = Case(model, inputs, e.maps, e.targets,
                        explain=_again(method, model.input_size, len(inputs), plan,
                                       max(plan.reexplain_passes, options.get("layers", 1) * passes)))
            try:
                out[name][check] = run(case, **options)
            except OnnxplainError as exc:
                out[name][check] = {"verdict": None, "reason": first_line(exc), "layers": [], "spearman": [],
                                    "ssim": []}
    return out
