"""CAM family speed, measured in one run: `taskset -c 0,1 python benchmarks/scorecam.py` (the target is 2 cores).

1. Score-CAM on every channel of MobileNetV2's last layer (1280) for one image, against the bound
   (channels / batch) × (time of one plain forward of a batch) × 1.1 (issue 3). The plain batches run on the same
   cached forward session, as many as Score-CAM has batches, interleaved with the Score-CAM runs so both see the
   same machine load; the figures are medians. Channels constant over space get w_k = 0 without a pass (the
   authors' code skips them), so the ratio is also printed against the passes Score-CAM actually ran.
2. Every CAM method's time over one plain forward pass of the same batch (medians, interleaved).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from run import median_times

import onnxplain
from onnxplain.explain import as_batch, forward
from onnxplain.methods.cam import CAM
from onnxplain.rewrite.graph import Request

ROOT = Path(__file__).resolve().parents[1]
BOUND = 1.1


def scorecam_ratio(model, x, batch: int, repeats: int) -> bool:
    layer = model.layers()[-1][0]
    a = model.session(Request(expose=(layer,), keep_outputs=False)).run([layer], {model.input: x})[0][0]
    channels = len(a)
    scored = int((a.max(axis=(1, 2)) > a.min(axis=(1, 2))).sum())
    plain = np.repeat(x, batch, axis=0)
    sess = model.session(Request(expose=(model.score,), keep_outputs=False))
    runs = -(-channels // batch)

    def forwards():
        for _ in range(runs):
            sess.run([model.score], {model.input: plain})

    onnxplain.explain(model, x, "scorecam", channels=batch, batch_size=batch)  # builds and warms its session
    fwd, score = [], []
    for _ in range(repeats):
        for fn, times in ((forwards, fwd), (lambda: onnxplain.explain(model, x, "scorecam", batch_size=batch), score)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    one = statistics.median(fwd) / runs
    t = statistics.median(score)
    bound = channels / batch * one * BOUND
    print(f"Score-CAM, {channels} channels of '{layer}', batch {batch}: {t:.2f} s; one plain batch "
          f"{one * 1e3:.1f} ms; bound {bound:.2f} s; ratio {t / (channels / batch * one):.3f} (bound {BOUND})")
    print(f"  {scored} channels vary over space and are scored; per pass actually run: "
          f"{t / (-(-scored // batch) * one):.3f} × a plain batch")
    return t <= bound


def cam_times(model, x, repeats: int):
    print(f"\nbatch {len(x)}: method / plain forward (medians of {repeats}, interleaved)")
    for name in sorted(n for n, cls in onnxplain.methods.METHODS.items() if issubclass(cls, CAM)):
        params = {"channels": 64} if name == "scorecam" else {}
        fwd, t = median_times([lambda: forward(model, x, batch_size=len(x)),
                               lambda: onnxplain.explain(model, x, name, batch_size=16, **params)], repeats)
        note = " (64 channels)" if params else ""
        print(f"  {name:<12} {t * 1e3:>9.1f} ms  {t / fwd:>7.2f}×{note}")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="Score-CAM runs (each ~80 plain batches)")
    parser.add_argument("--method-repeats", type=int, default=7)
    args = parser.parse_args()
    model = onnxplain.load(ROOT / "models" / "mobilenet_v2.onnx", device="cpu")
    x, _ = as_batch(model, [ROOT / "models" / "images" / "chelsea.png"])
    ok = scorecam_ratio(model, x, args.batch_size, args.repeats)
    cam_times(model, x, args.method_repeats)
    print("\nScore-CAM within its bound" if ok else "\nSCORE-CAM EXCEEDS ITS BOUND")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
