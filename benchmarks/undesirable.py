"""Undesirable pixels on the bundled MobileNetV2 and images: `python benchmarks/undesirable.py [-p KEY=VALUE ...]`
from the repository root (parameters of the `undesirable` method, e.g. `-p window=32 -p stride=16` or
`-p sampling=conditional -p samples=4`).

Removes the top-q % pixels of each map (against, competing and their union) and as many uniformly random pixels
(`onnxplain.metrics.undesirable_removal`, zero baseline) and prints the change of p(target) and of the margin
p(target) − max p(other), per image and averaged over the images, with the time of the explanation and the metric.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path


import onnxplain
from onnxplain.methods.undesirable import Undesirable
from onnxplain.metrics import undesirable_removal
from onnxplain_cli.main import _params

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "mobilenet_v2.onnx"
IMAGES = sorted((ROOT / "models" / "images").glob("*.png"))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("-q", type=float, nargs="+", default=[1, 5, 10], help="percent of the pixels removed")
    parser.add_argument("--repeats", type=int, default=10, help="random removals averaged per image and q")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    params = _params(args.param)
    m = onnxplain.load(MODEL, device="cpu", batch_size=args.batch_size)
    start = time.perf_counter()
    e = onnxplain.explain(m, [str(p) for p in IMAGES], "undesirable", **params)
    explained = time.perf_counter() - start
    print(f"undesirable {params or '(defaults)'}: {explained:.1f} s for {len(IMAGES)} images")
    for path, c, rivals in zip(IMAGES, e.targets, e.info["competitors"]):
        print(f"  {path.name}: target {m.label(int(c))} [{c}], competitors {[int(r) for r in rivals]}")
    start = time.perf_counter()
    for i, name in enumerate(Undesirable.parts + ("union",)):
        r = undesirable_removal(m, [str(p) for p in IMAGES], e.attributions[:, i], e.targets, q=args.q,
                                repeats=args.repeats, batch_size=args.batch_size)
        print(f"\n{name}: change after removing the top-q % pixels (map) or as many random pixels (random)")
        print(f"  {'image':<12}{'q %':>6}{'Δp map':>11}{'Δp random':>11}{'Δmargin map':>13}{'Δmargin random':>16}")
        for j, path in enumerate([p.name for p in IMAGES] + ["mean"]):
            pick = (lambda a: a.mean(axis=0)) if path == "mean" else (lambda a: a[j])
            for k, q in enumerate(args.q):
                row = [pick(r[key])[k] for key in ("target", "target_random", "margin", "margin_random")]
                print(f"  {path:<12}{q:>6g}{row[0]:>11.4f}{row[1]:>11.4f}{row[2]:>13.4f}{row[3]:>16.4f}")
    print(f"\nmetric: {time.perf_counter() - start:.1f} s for the {len(Undesirable.parts) + 1} maps")


if __name__ == "__main__":
    main()
