"""Black-box path benchmark: `python benchmarks/blackbox.py [--masks 4000] [--batch-size 16]` from the repository root.

1. RISE throughput on the bundled MobileNetV2 (224²) against plain batched inference at the same batch size, in
   one run. Plain batches are interleaved with RISE's: after each RISE batch (its progress callback) one plain
   batch of the same size runs on the same cached session and is timed on its own; RISE's time per batch is the
   interval between callbacks minus that plain batch. Both thus see the same machine load (on a shared machine
   throughput swings by 3× within a minute, which makes back-to-back measurements meaningless). The mask of the
   next RISE batch is made on the engine's worker thread while the current one runs, and is finished long before
   the plain batch starts, so the plain batch is not slowed by it.
2. PDA time per image (conditional sampling) at a small resolution and window: MobileNetV2 with its input set to
   --pda-size² (it is fully convolutional up to global pooling), window --pda-window, S = --pda-samples; the same
   run stopped half-way and resumed from its checkpoint must give the same map. The call count and the estimated
   time of the slow reference (224², k = 10, S = 10) at the measured plain throughput are printed too.

3. With --drise: step 1 for D-RISE on the corpus YOLOv8n (nudenet's, at 320², its top detection on the cat
   photo; see benchmarks/coverage.py for the file), the plain batches on D-RISE's own session (every output kept
   for the decoder), then stop.

Set the cores with `taskset -c 0,1 python benchmarks/blackbox.py` (the target is 2 cores).

Found with it: a multi-threaded OpenBLAS call (numpy's matrix-vector product over a 16×50 176 mask batch) leaves
its threads spinning for a while, and the next onnxruntime batch ran ~25 % slower; the engine's per-batch
products therefore use einsum, which stays on one thread.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

import onnxplain
from onnxplain.explain import as_batch
from onnxplain.perturb import Scorer

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "mobilenet_v2.onnx"
YOLO = Path.home() / ".cache" / "onnxplain" / "corpus" / "files" / "nudenet_yolov8n.onnx"  # benchmarks/coverage.py
IMAGE = ROOT / "models" / "images" / "chelsea.png"


def rise_throughput(masks: int, batch_size: int, detector: bool = False) -> float:
    """RISE on MobileNetV2, or D-RISE on the corpus YOLOv8n (`detector`), against plain batches."""
    if detector:
        m = onnxplain.load(YOLO, device="cpu", batch_size=batch_size, preprocessing={"size": [320, 320],
                                                                                     "scale": 1 / 255})
        scorer = Scorer(m, lambda out: out[m.score])  # D-RISE's session: every output kept for its decoder
    else:
        m = onnxplain.load(MODEL, device="cpu", batch_size=batch_size)
        scorer = Scorer(m, "probability")            # the same cached session RISE uses
    method, name = ("drise", "YOLOv8n (nudenet) 320x320") if detector else ("rise", "MobileNetV2 224x224")
    x, _ = as_batch(m, [IMAGE])
    plain = np.ascontiguousarray(np.repeat(x, batch_size, axis=0) * np.float32(0.5))
    for _ in range(3):                           # warm-up
        scorer.outputs(plain)
    stamps, plain_times = [], []

    def progress(done, total):
        stamps.append(time.perf_counter())
        t = time.perf_counter()
        scorer.outputs(plain)
        plain_times.append(time.perf_counter() - t)
        stamps.append(time.perf_counter())
        if len(plain_times) % 25 == 0:
            print(f"  {method} {done}/{total} masks", flush=True)

    start = time.perf_counter()
    e = onnxplain.explain(m, x, method, masks=masks, batch_size=batch_size, progress=progress)
    wall = time.perf_counter() - start
    # RISE's own time: the start → first callback (reference pass, first batch) and each callback → next callback
    edges = [start] + stamps[:-1]
    rise_time = sum(b - a for a, b in zip(edges[0::2], edges[1::2]))
    plain_time = sum(plain_times)
    rise_rate = masks / rise_time
    plain_rate = batch_size * len(plain_times) / plain_time
    ratio = rise_rate / plain_rate
    med_rise = batch_size / np.median(np.diff(stamps[0::2]) - np.asarray(plain_times[:-1]))
    print(f"{method} {masks} masks on {name}, batch {batch_size}, {os.cpu_count()} CPUs visible "
          f"({len(os.sched_getaffinity(0))} usable)")
    print(f"  {method}: {rise_time:7.2f} s  {rise_rate:7.1f} model calls/s (median batch: {med_rise:.1f}/s)")
    print(f"  plain: {plain_time:7.2f} s  {plain_rate:7.1f} images/s over {len(plain_times)} interleaved batches "
          f"(median batch: {batch_size / np.median(plain_times):.1f}/s)")
    print(f"  throughput ratio {method} / plain: {ratio:.3f}  ({'holds' if ratio >= 0.9 else 'FAILS'} the ≥ 0.90 target)"
          f"; wall {wall:.1f} s, target class {m.label(int(e.targets[0]))}")
    return plain_rate


def small_mobilenet(size: int) -> Path:
    """MobileNetV2 with a size×size input (convolutions and global pooling accept any size)."""
    proto = onnx.load(str(MODEL))
    for d in proto.graph.input[0].type.tensor_type.shape.dim[2:]:
        d.dim_value = size
    del proto.graph.value_info[:]
    path = Path(tempfile.mkdtemp()) / f"mobilenet_v2_{size}.onnx"
    onnx.save(proto, str(path))
    return path


def pda_time(size: int, window: int, samples: int, batch_size: int, plain_rate: float) -> None:
    m = onnxplain.load(small_mobilenet(size), preprocessing="imagenet-noresize", device="cpu",
                       batch_size=batch_size)
    x, _ = as_batch(m, [IMAGE])
    calls = (size - window + 1) ** 2 * samples
    params = dict(window=window, samples=samples, batch_size=batch_size)
    onnxplain.explain(m, x, "pda", **{**params, "stride": size})    # the sampler's set-up, cached per window size
    scorer = Scorer(m, "probability")
    plain = np.ascontiguousarray(np.repeat(x, batch_size, axis=0))

    def plain_speed(n=200):
        start = time.perf_counter()
        for _ in range(n):
            scorer.session.run([m.score], {m.input: plain})
        return n * batch_size / (time.perf_counter() - start)

    before = plain_speed()
    start = time.perf_counter()
    full = onnxplain.explain(m, x, "pda", **params)
    t = time.perf_counter() - start
    after = plain_speed()
    print(f"PDA on MobileNetV2 {size}x{size}, window {window}, S={samples}, conditional sampling: {calls} model calls, "
          f"{t:.1f} s per image ({calls / t:.0f} calls/s; plain inference at {size}x{size} before/after: "
          f"{before:.0f}/{after:.0f} images/s)")

    checkpoint = Path(tempfile.mkdtemp()) / "pda.ckpt.npz"

    def stop_half_way(done, total):
        if done >= total // 2:
            raise KeyboardInterrupt

    try:
        onnxplain.explain(m, x, "pda", checkpoint=str(checkpoint), progress=stop_half_way, **params)
    except KeyboardInterrupt:
        pass
    seen = []
    start = time.perf_counter()
    resumed = onnxplain.explain(m, x, "pda", checkpoint=str(checkpoint), progress=lambda d, n: seen.append(d),
                                **params)
    t2 = time.perf_counter() - start
    same = np.array_equal(resumed.maps, full.maps)
    print(f"  stopped at 50 %, resumed from {seen[0] - batch_size}/{calls} calls in {t2:.1f} s: map "
          f"{'identical' if same else 'DIFFERENT'} to the uninterrupted run; checkpoint removed: "
          f"{not checkpoint.exists()}")
    ref_calls = (224 - 10 + 1) ** 2 * 10
    print(f"  the slow reference (224x224, k=10, S=10) is {ref_calls} calls: ≈ {ref_calls / plain_rate / 3600:.1f} h "
          f"per image at the plain throughput measured above")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--masks", type=int, default=4000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--pda-size", type=int, default=32)
    ap.add_argument("--pda-window", type=int, default=5)
    ap.add_argument("--pda-samples", type=int, default=10)
    ap.add_argument("--drise", action="store_true", help="D-RISE on the corpus YOLOv8n instead, and stop there")
    args = ap.parse_args()
    if args.drise:
        rise_throughput(args.masks, args.batch_size, detector=True)
        return
    plain_rate = rise_throughput(args.masks, args.batch_size)
    pda_time(args.pda_size, args.pda_window, args.pda_samples, args.batch_size, plain_rate)


if __name__ == "__main__":
    main()
