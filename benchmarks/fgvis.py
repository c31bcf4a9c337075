"""FGVis on the bundled MobileNetV2 and both bundled images: `taskset -c 0,1 python benchmarks/fgvis.py`.

1. The deletion game with the paper's filter (slack 0), with the filter at --slack, and without the filter:
   iterations run, deleted fraction, whether the class flipped, time, and the activation mass the explanation adds
   over the image's (Σ max(a(e) − a⁰, 0) / Σ a⁰ over the filtered ReLU6 outputs: the adversarial evidence the
   filter exists to stop).
2. The preservation game, the same three settings and --preserve iterations each (no early stop): the activation
   mass the kept part adds over the image's, where adversarial evidence shows.
3. Deletion AUC (onnxplain.metrics.deletion, probability, zero baseline; lower is better) of FGVis's map (the
   mean over channels of 1 − m) against RISE (1000 masks, to keep it affordable) and Grad-CAM.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import onnxplain
from onnxplain.explain import as_batch
from onnxplain.metrics import deletion
from onnxplain.rewrite.graph import Request
from onnxplain.rewrite.modified.fgvis import filtered_tensors

ROOT = Path(__file__).resolve().parents[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--masks", type=int, default=1000, help="RISE masks")
    parser.add_argument("--slack", type=float, default=0.1, help="the loosened filter's slack")
    parser.add_argument("--preserve", type=int, default=100, help="preservation-game iterations")
    args = parser.parse_args()
    model = onnxplain.load(ROOT / "models" / "mobilenet_v2.onnx", device="cpu")
    images = [ROOT / "models" / "images" / f"{n}.png" for n in ("chelsea", "coffee")]
    x, _ = as_batch(model, images)
    names = filtered_tensors(model.proto, model.input, model.score)
    activations = model.session(Request(expose=tuple(names), keep_outputs=False))
    a0 = activations.run(names, {model.input: x})
    maps = {}
    settings = {"filter on": dict(filter=True), f"filter on, slack {args.slack}": dict(filter=True, slack=args.slack),
                "filter off": dict(filter=False)}

    def added(e):  # per image
        ae = activations.run(names, {model.input: e.info["explanation"]})
        return sum(np.maximum(b - a, 0).sum(axis=(1, 2, 3)) for a, b in zip(a0, ae)) / sum(
            a.sum(axis=(1, 2, 3)) for a in a0)

    print(f"FGVis deletion game, MobileNetV2, {len(names)} filtered ReLU6 outputs, up to {args.iterations} iterations")
    for label, params in settings.items():
        start = time.perf_counter()
        e = onnxplain.explain(model, x, "fgvis", iterations=args.iterations, **params)
        t = time.perf_counter() - start
        print(f"  {label}: {t:.1f} s")
        for i, (path, mass) in enumerate(zip(images, added(e))):
            print(f"    {path.stem:<8} class {e.targets[i]} ({model.label(int(e.targets[i]))}): score "
                  f"{e.scores[i]:.2f} -> {e.info['score'][i]:.2f}, flipped {bool(e.info['flipped'][i])}, "
                  f"iterations {e.info['iterations'][i]}, deleted fraction {e.info['deleted_fraction'][i]:.4f}, "
                  f"added activation mass {mass:.4f}")
        maps[f"fgvis ({label})"] = (e.maps, e.targets)
    print(f"FGVis preservation game, {args.preserve} iterations: activation mass added over the image's")
    for label, params in settings.items():
        e = onnxplain.explain(model, x, "fgvis", game="preservation", iterations=args.preserve, **params)
        print(f"  {label:<20} " + "  ".join(f"{p.stem} {v:.4f} (kept {1 - d:.3f})" for p, v, d in
                                          zip(images, added(e), e.info["deleted_fraction"])))
    for method, params in (("rise", {"masks": args.masks}), ("gradcam", {})):
        e = onnxplain.explain(model, x, method, **params)
        maps[method] = (e.maps, e.targets)
    print("deletion AUC (lower is better)")
    for label, (m, targets) in maps.items():
        auc = deletion(model, x, m, targets)
        per_image = "  ".join(f"{p.stem} {v:.4f}" for p, v in zip(images, auc))
        print(f"  {label:<20} {per_image}  mean {auc.mean():.4f}")


if __name__ == "__main__":
    main()
