"""Throughput of the faithfulness and robustness metrics against plain batched inference, measured in one run:
`python benchmarks/metrics_throughput.py [--images N] [--batch B] [--samples S]`.

The bundled MobileNetV2 (CPU) on N copies of the bundled photos at 224×224, Grad-CAM's maps under test, each metric
of `onnxplain.metrics.REGISTRY` in the faithfulness and robustness groups with its defaults. For each: the model
passes it made per image (rows through the scoring session, counted; the reference pass of the unperturbed images
included) and images·passes per second, against the same model's plain batched inference of the same inputs at the
same batch size (images per second). The metric and the plain run take turns --repeats times and each figure is
the best of its runs, so that a shared machine's drifts and stalls hit them alike. Max-sensitivity's
passes are explanations of noisy copies, so it is set against plain batched Grad-CAM explanations instead; it runs
--samples samples, not Quantus's 200, to keep the run short (its rate does not depend on the count).

Goal (issue 17): every metric at ≥ 0.9× plain batched inference. The exit status is 1 when one is missed.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

import onnxplain
from onnxplain.explain import as_batch
from onnxplain.metrics import REGISTRY, Case
from onnxplain.perturb import Scorer

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = [ROOT / "models" / "images" / "chelsea.png", ROOT / "models" / "images" / "coffee.png"]
GOAL = 0.9


def rate(work, rows: int) -> float:
    """rows per second of one call of work()."""
    start = time.perf_counter()
    work()
    return rows / (time.perf_counter() - start)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--samples", type=int, default=10, help="max-sensitivity's samples")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each metric and of plain inference (best counts)")
    ap.add_argument("--metric", action="append", help="only this metric (repeatable; default: every one)")
    args = ap.parse_args()
    m = onnxplain.load(ROOT / "models" / "mobilenet_v2.onnx", device="cpu", batch_size=args.batch)
    x, _ = as_batch(m, [PHOTOS[i % 2] for i in range(args.images)])
    e = onnxplain.explain(m, x, "gradcam")
    case = Case(m, x, e.maps, e.targets,
                explain=lambda model, inputs, targets: onnxplain.explain(model, inputs, "gradcam", target=targets).maps)
    scorer = Scorer(m.for_batch(x), "probability")
    rows = {"n": 0}
    original = Scorer.outputs

    def counted(self, batch):                     # every row a metric scores goes through Scorer.outputs
        rows["n"] += len(batch)
        return original(self, batch)
    big = np.concatenate([x] * max(1, 4 * args.batch // len(x)))

    def plain():
        return rate(lambda: [original(scorer, big[a:a + args.batch]) for a in range(0, len(big), args.batch)],
                    len(big))

    def plain_explain():
        return rate(lambda: onnxplain.explain(m, big, "gradcam", batch_size=args.batch), len(big))

    results = []
    Scorer.outputs = counted
    try:
        for name, metric in REGISTRY.items():
            if metric.group not in ("faithfulness", "robustness") or args.metric and name not in args.metric:
                continue
            reference = plain_explain if name == "max_sensitivity" else plain
            options = {"samples": args.samples} if name == "max_sensitivity" else {}
            seconds, plains = [], []
            for _ in range(args.repeats):
                plains.append(reference())
                rows["n"] = 0
                start = time.perf_counter()
                metric(case, batch_size=args.batch, **options)
                seconds.append(time.perf_counter() - start)
            plains.append(reference())
            passes = args.samples if name == "max_sensitivity" else rows["n"] / len(x)
            results.append((name, metric.group, passes, len(x) * passes / min(seconds), max(plains)))
    finally:
        Scorer.outputs = original
    print(f"mobilenet_v2, {len(x)} images 224×224, batch {args.batch}, CPU; load average at the end "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())} on {os.cpu_count()} cores")
    print(f"{'metric':<26} {'group':<13} {'passes/image':>12} {'images·passes/s':>16} {'plain/s':>8} {'ratio':>6}  "
          f"plain is")
    missed = []
    for name, group, passes, speed, against in results:
        ratio = speed / against
        missed += [name] if ratio < GOAL else []
        print(f"{name:<26} {group:<13} {passes:>12.0f} {speed:>16.1f} {against:>8.1f} {ratio:>6.2f}  "
              f"{'batched Grad-CAM' if name == 'max_sensitivity' else 'batched inference'}")
    print(f"goal ≥ {GOAL}× plain: " + (f"missed by {', '.join(missed)}" if missed else "met by every metric"))
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
