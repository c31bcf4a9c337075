"""SISE against Grad-CAM on ground truth, and SISE's cost: `python benchmarks/sise.py` from the repository root.

1. Energy-based pointing game (Wang et al. 2020) and pointing game of the true class on the held-out scenes of the
   shapes model (models/localisation/, skipped when it is not built), SISE against Grad-CAM (the paper's claim:
   SISE ≥ Grad-CAM; ResNet-50 on VOC 2007: 66.1 against 60.1).
2. SISE's time on MobileNetV2 (one image, 5 block ends) over one plain forward of a batch of `--batch-size`, and
   per masked pass it ran (its maps kept), for μ = 0 and μ = 0.5 (medians, interleaved with the forwards).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from run import median_times

import onnxplain
from onnxplain.explain import as_batch, forward
from onnxplain.metrics import energy_pointing_game, pointing_game
from onnxplain.preprocess import to_input

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "models" / "localisation"


def localisation(images: int):
    if not (FOLDER / "heldout.npz").exists():
        print(f"{FOLDER} is not built: no localisation comparison")
        return
    m = onnxplain.load(FOLDER / "shapes.onnx", device="cpu")
    data = np.load(FOLDER / "heldout.npz")
    x = np.stack([to_input(view, m.preprocessing) for view in data["images"][:images]])
    labels, masks = data["labels"][:len(x)], np.unpackbits(data["masks"][:len(x)], axis=-1).astype(bool)
    print(f"shapes.onnx, {len(x)} held-out scenes, true class explained")
    print(f"{'method':<8} {'energy':>7} {'pointing':>8} {'seconds':>8}")
    for method in ("sise", "gradcam"):
        start = time.perf_counter()
        e = onnxplain.explain(m, x, method, target=labels)
        t = time.perf_counter() - start
        print(f"{method:<8} {energy_pointing_game(e.maps, masks).mean():>7.3f} "
              f"{pointing_game(e.maps, masks).mean():>8.3f} {t:>8.1f}", flush=True)


def cost(batch: int, repeats: int):
    m = onnxplain.load(ROOT / "models" / "mobilenet_v2.onnx", device="cpu")
    x, _ = as_batch(m, [ROOT / "models" / "images" / "chelsea.png"])
    plain = np.repeat(x, batch, axis=0)
    forward(m, plain, batch)  # builds the forward session
    print(f"\nMobileNetV2, one image, batch {batch}: SISE / one plain forward of the batch (medians of {repeats})")
    for mu in (0.0, 0.5):
        kept = int(onnxplain.explain(m, x, "sise", mu=mu, batch_size=batch).info["kept"].sum())
        fwd, t = median_times([lambda: forward(m, plain, batch),
                               lambda: onnxplain.explain(m, x, "sise", mu=mu, batch_size=batch)], repeats, warmup=0)
        print(f"  mu={mu}: {kept} maps kept, {t:.2f} s = {t / fwd:.1f} forwards of {batch}; "
              f"{t / (kept / batch) / fwd:.2f} × a forward per {batch} masked passes", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200, help="held-out scenes to score (at most 200)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    localisation(args.images)
    cost(args.batch_size, args.repeats)


if __name__ == "__main__":
    main()
