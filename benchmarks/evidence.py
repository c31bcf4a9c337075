"""Efficient evidence analysis against PDA: `python benchmarks/evidence.py [--size 224] [--stride 10]` from the
repository root (the target machine: `taskset -c 0,1`).

On the bundled MobileNetV2 (its input set to --size², as benchmarks/blackbox.py does) and both bundled images,
at PDA's window (10), stride and S, with conditional sampling: the time per image of PDA, of route (b) "evidence"
(first order) and of route (a) "evidence_hidden" at each --layers tensor; the speed ratio PDA / route (target
≥ 10×) and the Spearman rank correlation of each route's map to PDA's. Every method runs once first on a tiny
setting so that sessions and the sampler's per-window-size set-up (shared by PDA and route b) are built and
cached outside the timings. Stride 1 at 224² is ≈ 460 000 model calls per image for PDA (hours on 2 cores):
the default stride keeps PDA affordable; the routes run at the same stride.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import onnxplain
from onnxplain.explain import as_batch
from onnxplain.metrics import spearman

from blackbox import IMAGE, small_mobilenet

IMAGES = [IMAGE, IMAGE.with_name("coffee.png")]


def timed(m, x, method, **params):
    start = time.perf_counter()
    e = onnxplain.explain(m, x, method, **params)
    return e, time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--stride", type=int, default=10)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--layers", nargs="*", default=["hardtanh_34", "hardtanh_26"],
                    help="hidden tensors for route (a) (MobileNetV2's 7² and 14² block ends at 224²)")
    args = ap.parse_args()
    m = onnxplain.load(small_mobilenet(args.size), preprocessing="imagenet-noresize", device="cpu",
                       batch_size=args.batch_size)
    common = dict(window=args.window, stride=args.stride, batch_size=args.batch_size)
    hidden = [("evidence_hidden", dict(layer=layer, samples=args.samples)) for layer in args.layers]
    routes = [("evidence", {})] + hidden
    x0, _ = as_batch(m, IMAGES[:1])
    for method, params in [("pda", dict(samples=2))] + routes:                  # warm-up: sessions, sampler
        onnxplain.explain(m, x0, method, **{**common, **params, "stride": args.size})
    onnxplain.explain(m, x0, "evidence", **common)                              # every ring offset's regression
    print(f"MobileNetV2 {args.size}x{args.size}, window {args.window}, stride {args.stride}, S={args.samples}, "
          f"batch {args.batch_size}")
    for path in IMAGES:
        x, _ = as_batch(m, [path])
        pda, t_pda = timed(m, x, "pda", samples=args.samples, **common)
        print(f"{path.name}: {m.label(int(pda.targets[0]))}; PDA {t_pda:.1f} s")
        for method, params in routes:
            e, t = timed(m, x, method, **{**common, **params})
            where = f" at {params['layer']} {e.attributions.shape[1]}x{e.attributions.shape[2]}" if params else ""
            sign = float(np.mean(np.sign(e.maps) == np.sign(pda.maps)))
            print(f"  {method}{where}: {t:.2f} s, {t_pda / t:.1f}x faster than PDA "
                  f"({'holds' if t_pda / t >= 10 else 'FAILS'} ≥ 10x); Spearman to PDA "
                  f"{spearman(e.maps, pda.maps):.3f}, same sign on {100 * sign:.0f} % of pixels")


if __name__ == "__main__":
    main()
