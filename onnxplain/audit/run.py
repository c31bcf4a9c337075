"""The audit driver: stream the data in batches through the per-batch step of `audit_batch` (here, or on Ray
actors), store each batch's rows as it finishes, resume from them, and write results.json and per_image.csv at the
end."""
from __future__ import annotations

import json
import os
import reprlib
import shutil
from collections.abc import Iterator, Mapping
from contextlib import closing
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

from .. import manifest as run_manifest
from .. import methods as method_registry
from ..errors import OnnxplainError
from ..limits import whole
from ..metrics import CHECKS, REGISTRY
from ..rewrite.graph import opset_of
from ..report import NAME as REPORT
from ..report import write_report
from ..runtime import prefetched
from .batch import TARGETS, Plan, constant, read, sanity_batch, score
from .data import Data, read_data
from .results import ROWS, each_row, repair_rows, summarise, write_csv, write_files, write_json, write_rows

SANITY = "sanity.json"
# Where an audit's default differs from the metric's own (Quantus's): max-sensitivity's 200 re-explanations per image
# would make it the whole audit's cost (IG: 10 400 gradient passes per image); 20 samples keep it one of the metrics.
AUDIT_OPTIONS = {"max_sensitivity": {"samples": 20}}
OWN = ("results.json", "per_image.csv", ROWS, SANITY, REPORT, run_manifest.NAME, "maps")  # an audit's own files


def audit(model, data, methods, out, *, metrics=None, target: str = "label", resume: bool = False,
          force: bool = False, engine: str = "local", address: str | None = None, actors: int | None = None,
          params: Mapping | None = None, options: Mapping | None = None, batch_size: int | None = None, seed: int = 0,
          reexplain_passes: int = 20_000, sanity_images: int = 2, progress=None, command: str | None = None) -> dict:
    """Audit explanation `methods` of `model` (a Model or a path) on `data` (a folder of images, a folder of class
    folders, or a CSV `path,label[,x1,y1,x2,y2][,mask]`; see `read_data`), writing to the folder `out`:
    per_image.jsonl (a row per image and method, appended as each batch finishes), maps/<id>/, per_image.csv,
    results.json (whose contents this returns) and from it report.html (`onnxplain.report.write_report`).

    metrics: names from `onnxplain.metrics.REGISTRY` (default: every registered metric the data allows: those
    needing ground truth only when it has boxes or masks); options: {metric: {option: value}}; params: {method:
    {parameter: value}}. target: "label" (an image's label where it has one, else its top-1 class) or "top1".
    resume: go on from the rows an earlier run of the same audit left in `out`; force: start again in an `out` that
    holds files (an audit's own files there are replaced, others kept). progress: progress(done, total) in images.
    reexplain_passes: the model passes per image a metric may spend explaining again (robustness and randomisation
    metrics do), else it is not run for that method, with its reason in the rows' metric_errors. The randomisation
    checks (mprt, random_logit among the metrics) also run once on the first `sanity_images` images for the sanity
    section (sanity.json; see `sanity_batch`), in this process whatever the engine.
    engine: "local", or "ray" to score the batches on a Ray cluster's actors (`address`, `actors`: as for
    `explain_images`), which write the maps where they run: the same rows and results as a local run.
    """
    if engine not in ("local", "ray"):
        raise OnnxplainError(f"engine must be 'local' or 'ray', not {reprlib.repr(engine)}")
    if target not in TARGETS:
        raise OnnxplainError(f"target must be one of {', '.join(TARGETS)}, not {reprlib.repr(target)}")
    if isinstance(model, (str, os.PathLike)):
        from ..model import load
        model = load(model)
    methods = [methods] if isinstance(methods, str) else list(dict.fromkeys(methods))
    if not methods:
        raise OnnxplainError("give at least one method to audit")
    params, options = dict(params or {}), dict(options or {})
    for method in methods:
        method_registry.get(method, **params.get(method, {}))  # unknown methods and parameters refused here
    unknown = [m for m in list(metrics or ()) + list(options) if m not in REGISTRY]
    if unknown:
        raise OnnxplainError(f"unknown metric {reprlib.repr(unknown[0])} (known: {', '.join(REGISTRY)})")
    out = Path(out)
    found = read_data(model, data)
    truth = any(r.has_truth for r in found.records)
    if metrics is not None:
        lacking = next((m for m in metrics if "masks" in REGISTRY[m].needs and not truth), None)
        if lacking:
            raise OnnxplainError(f"metric {lacking} needs ground truth: boxes or masks in a CSV (path,label,x1,y1,x2,"
                                 f"y2[,mask]); {found.source} has none")
    chosen = list(metrics) if metrics is not None else [m for m, r in REGISTRY.items() if truth or
                                                         "masks" not in r.needs]
    size = model.batch_size if batch_size is None else whole("batch_size", batch_size)
    if engine == "ray":  # joined before anything is written: Ray missing or an address not answering is one line
        from ..engines import ray as cluster
        cluster.connect(address)
    plan = Plan({m: dict(params.get(m, {})) for m in methods},
                {m: {**AUDIT_OPTIONS.get(m, {}), **options.get(m, {})} for m in chosen},
                target, seed, size, reexplain_passes=whole("reexplain_passes", reexplain_passes),
                sanity_images=whole("sanity_images", sanity_images))
    record = {**run_manifest.versions(), "command": command, "kind": "audit", "model": run_manifest.model_record(model),
              "data": str(Path(found.source).absolute()), "batch_size": size,
              "plan": run_manifest.jsonable({k: getattr(plan, k) for k in ("methods", "metrics", "target", "seed",
                                                                           "reexplain_passes", "sanity_images")})}
    runs = _prepare_folder(out, record, resume, force)
    repair_rows(out)
    done = {(r["id"], r["method"]) for r in each_row(out)}
    todo = [r for r in found.records if any((r.id, m) not in done for m in methods)]
    run_manifest.write(out, runs + [record])
    total, finished = len(found.records), len(found.records) - len(todo)
    devices = set(model.devices_used())
    chunks = [todo[a:a + size] for a in range(0, len(todo), size)]
    if progress is not None:
        progress(finished, total)
    warning = constant(model, found.records, plan)  # after the first progress: the command's notes come first
    with closing(_local(model, chunks, plan) if engine == "local" else cluster.run(
            model, chunks, partial(read, model.preprocessing), partial(_written, plan=plan, out=out.absolute()),
            address, actors)) as scored:
        for rows, used in scored:
            write_rows(out, rows, done)
            devices.update(used)
            finished += len({r["id"] for r in rows})
            if progress is not None:
                progress(finished, total)
    if any(c in CHECKS for c in plan.metrics) and not (out / SANITY).exists():
        write_json(out / SANITY, sanity_batch(model, found.records[:plan.sanity_images], plan))
    results = finish(out, model, found, plan, command, sorted(devices), [warning] if warning else [])
    write_report(out)
    return results


def _local(model, chunks: list, plan: Plan) -> Iterator[tuple[list[dict], list[str]]]:
    """Each chunk's rows: read on a thread, the next while this one is scored."""
    with closing(prefetched(partial(read, model.preprocessing), chunks)) as batches:
        for batch in batches:
            yield score(model, batch, plan), model.devices_used()


def _written(model, batch, plan: Plan, out: Path) -> tuple[list[dict], list[str]]:
    """A batch's rows scored and their files written on the Ray actor that scored them: the rows to append, and the
    devices its sessions ran on."""
    return write_files(out, score(model, batch, plan)), model.devices_used()


def _prepare_folder(out: Path, record: dict, resume: bool, force: bool) -> list[dict]:
    """Check (and with `force`, clear) the output folder; the runs its manifest records."""
    if os.path.lexists(out) and (out.is_symlink() or not out.is_dir()):
        if not force or not out.is_symlink():
            link = out.is_symlink()
            raise OnnxplainError(f"{out} exists and is {'a link' if link else 'not a folder'}; give another folder"
                                 + (" or use --force to replace the link" if link else ""))
        out.unlink()
    holds = out.is_dir() and any(out.iterdir())
    if force:
        for name in OWN:
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif os.path.lexists(path):
                path.unlink()
        return []
    if holds and not resume:
        raise OnnxplainError(f"{out} exists and holds files; use --resume to go on with its audit, or --force to "
                             f"start again")
    runs = run_manifest.read(out, False) if holds else []
    audits = [r for r in runs if r.get("kind") == "audit"]
    if holds and not audits:
        raise OnnxplainError(f"{out} holds no audit to resume; give another folder, or use --force to start again")
    if audits:
        last = audits[-1]
        for key, what in (("plan", "methods, metrics or target"), ("data", "data")):
            if last.get(key) != record[key]:
                raise OnnxplainError(f"{out} holds an audit of other {what}; give another folder, or use --force "
                                     f"to start again")
        if (last.get("model") or {}).get("sha256") != record["model"]["sha256"]:
            raise OnnxplainError(f"{out} holds an audit of another model file; give another folder, or use --force "
                                 f"to start again")
    return runs


def finish(out: Path, model, data: Data, plan: Plan, command: str | None, devices: list[str],
           warnings: list[str]) -> dict:
    """Write results.json and per_image.csv from the rows stored in `out`; returns the results. devices: those the
    sessions ran on (here, or on the Ray actors); warnings: what makes the results doubtful (`constant`)."""
    metrics = {name: REGISTRY[name] for name in plan.metrics}
    sanity = json.loads((out / SANITY).read_text(encoding="utf-8")) if (out / SANITY).exists() else {}
    checks = [c for c in plan.metrics if c in CHECKS]
    note = (f"{', '.join(checks)} on the first {min(plan.sanity_images, len(data.records))} images; the parameter "
            f"randomisation cascade (top layer first) stops after the layers --reexplain-passes pays for"
            if checks else "no randomisation check (mprt, random_logit) was among the metrics")
    part = summarise(out, metrics, plan.seed)
    images = {r.id: r for r in data.records}
    classes = {}
    for r in data.records:
        if r.label is not None:
            classes[r.label_name] = classes.get(r.label_name, 0) + 1
    results = {
        "onnxplain": run_manifest.versions()["onnxplain"], "created": datetime.now(timezone.utc).isoformat(),
        "command": command, "warnings": warnings, "model": model_card(model, devices),
        "data": {"source": data.source, "kind": data.kind, "images": len(images),
                 "labelled": sum(r.label is not None for r in data.records),
                 "with_masks": sum(r.has_truth for r in data.records), "classes": classes,
                 "failed": part["failed"]},
        "target": plan.target, "accuracy": part["accuracy"],
        "methods": {m: {"status": "ok", "reason": None, "seconds": 0.0, **part["methods"].get(m, {}),
                        "params": run_manifest.parameters(method_registry.get(m, **p))}
                    for m, p in plan.methods.items()},
        "metrics": {name: {"group": m.group, "better": m.better, "paper": m.paper, "needs": list(m.needs),
                           "options": run_manifest.jsonable(plan.metrics[name])} for name, m in metrics.items()},
        "summary": part["summary"], "ranking": part["ranking"],
        "sanity": sanity, "sanity_note": note,
        "per_class": part["per_class"], "gallery": part["gallery"], "grid": part["grid"], "images": part["images"]}
    write_json(out / "results.json", results)
    write_csv(out / "per_image.csv", each_row(out), list(plan.metrics))
    return results


def model_card(model, devices: list[str]) -> dict:
    """The model as results.json describes it: file, hash, producer, opset, input, preprocessing (and whether it
    was guessed), the devices its sessions ran on, what the load passes did, classes."""
    record = run_manifest.model_record(model)
    proto = model.proto
    shape = next(([d.dim_value or d.dim_param or None for d in i.type.tensor_type.shape.dim]
                  for i in proto.graph.input if i.name == model.input), None)
    return {"path": record["path"], "sha256": record["sha256"], "producer": proto.producer_name or None,
            "producer_version": proto.producer_version or None, "opset": opset_of(proto),
            "ir_version": proto.ir_version,
            "input": {"name": model.input, "shape": shape, "layout": model.layout,
                      "size": list(model.preprocessing.size) if model.preprocessing.size else None},
            "preprocessing": record["preprocessing"], "provider": ", ".join(devices) or None,
            "passes": [f"{name}: {note}" for name, note in model.normalised], "classes": model.num_classes,
            "labels": bool(model.labels)}
