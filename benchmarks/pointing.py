"""Pointing game of every method on ground truth: `python benchmarks/pointing.py [--images N]` from the repository root.

Each method in `onnxplain.METHODS` (the registry, so new methods join) explains the true class of the first N
held-out scenes of the shapes model (models/localisation/: one class-deciding shape on a cluttered 64×64 scene, its
pixel mask as ground truth). Printed per method: the pointing game (Zhang et al. 2016: the map's first maximum on the
mask), exactly and within --tolerance pixels (default 4: their 15 pixels at 224² scaled to 64²), the energy-based
pointing game (Wang et al. 2020: the share of the map's positive mass on the mask) and the time taken. Piecewise
constant maps (superpixels, strided windows) point with the top-left pixel of their best piece, which the tolerance
forgives. The perturbation methods run with fewer model calls than their defaults (PARAMS); a method that refuses the
model (OnnxplainError) is listed with its reason. All 200 scenes take about 6 minutes on 2 cores, nearly all of it
in the perturbation methods.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import onnxplain
from onnxplain.explain import forward
from onnxplain.metrics import energy_pointing_game, pointing_game
from onnxplain.preprocess import to_input

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "models" / "localisation"
PARAMS = {"occlusion": {"window": 8, "stride": 4}, "rise": {"masks": 1000}, "lime": {"samples": 500},
          "kernelshap": {"samples": 500}, "pda": {"window": 8, "stride": 4, "samples": 4}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200, help="held-out scenes to score (at most 200)")
    ap.add_argument("--tolerance", type=float, default=4, help="pointing-game tolerance in pixels")
    args = ap.parse_args()
    m = onnxplain.load(FOLDER / "shapes.onnx", device="cpu")
    data = np.load(FOLDER / "heldout.npz")
    x = np.stack([to_input(view, m.preprocessing) for view in data["images"][:args.images]])
    labels = data["labels"][:len(x)]
    masks = np.unpackbits(data["masks"][:len(x)], axis=-1).astype(bool)
    accuracy = (forward(m, x).argmax(1) == labels).mean()
    print(f"shapes.onnx, {len(x)} held-out scenes (accuracy {accuracy:.3f}), true class explained; the objects cover "
          f"{masks.mean():.1%} of the image (a uniform map's energy)")
    width = max(map(len, onnxplain.METHODS))
    print(f"{'method':<{width}} {'group':<12} {'pointing':>8} {f'±{args.tolerance:g} px':>8} {'energy':>7} "
          f"{'seconds':>8}  parameters")
    for name, cls in onnxplain.METHODS.items():
        params = PARAMS.get(name, {})
        start = time.perf_counter()
        try:
            e = onnxplain.explain(m, x, name, target=labels, **params)
        except onnxplain.OnnxplainError as exc:
            print(f"{name:<{width}} {cls.group:<12} skipped: {exc}")
            continue
        t = time.perf_counter() - start
        scores = (pointing_game(e.maps, masks).mean(), pointing_game(e.maps, masks, args.tolerance).mean(),
                  energy_pointing_game(e.maps, masks).mean())
        print(f"{name:<{width}} {cls.group:<12} {scores[0]:>8.3f} {scores[1]:>8.3f} {scores[2]:>7.3f} {t:>8.1f}  "
              f"{', '.join(f'{k}={v}' for k, v in params.items())}", flush=True)


if __name__ == "__main__":
    main()
