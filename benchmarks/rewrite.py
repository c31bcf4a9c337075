"""Rewrite time against graph size, measured in one run: `python benchmarks/rewrite.py` (issue 14, item 5).

For chains of 2000, 20000 and 100000 Relus (on a 3×8×8 input, global pooling and a Gemm head) and for a deep ViT
exported by torch (the bundled transformer's blocks repeated, legacy exporter: its shape arithmetic, LayerNorms,
attention), the CPU seconds (time.process_time: this machine's cores are shared) of `onnxplain.load`, and of
building the graph of Saliency (input gradient) and of Grad-CAM (the layer search, then the layer gradient) with
`rewrite.graph.build`, each the median of `--repeats` runs; with `--sessions`, also onnxruntime's session creation
for Saliency's graph (its optimiser is onnxruntime's own time, not the rewrite's). Then the growth exponent k of
time ∝ nodes^k between consecutive chain sizes. Exits non-zero when the 20000-node chain's builds take a minute
or more, or the exponent of the builds exceeds BOUND.
"""
from __future__ import annotations

import argparse
import io
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "models"))

import onnxplain  # noqa: E402
from onnxplain import methods  # noqa: E402
from onnxplain.explain import cam_layer  # noqa: E402
from onnxplain.rewrite.graph import build  # noqa: E402
from onnxplain.runtime import Session, SessionCache  # noqa: E402

SIZES = (2000, 20000, 100000)
BOUND = 1.2       # growth exponent of the build times
MINUTE = 60.0     # the 20000-node chain's saliency and gradcam builds, together


def relu_chain(n: int, classes: int = 10) -> onnx.ModelProto:
    nodes = [helper.make_node("Relu", [f"r{i - 1}" if i else "x"], [f"r{i}"], name=f"relu{i}") for i in range(n)]
    nodes += [helper.make_node("GlobalAveragePool", [f"r{n - 1}"], ["gap"]),
              helper.make_node("Flatten", ["gap"], ["flat"]),
              helper.make_node("Gemm", ["flat", "W", "b"], ["logits"], transB=1)]
    weights = [numpy_helper.from_array(np.random.default_rng(0).standard_normal((classes, 3), np.float32), "W"),
               numpy_helper.from_array(np.zeros(classes, np.float32), "b")]
    graph = helper.make_graph(nodes, f"relu{n}", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def deep_vit(depth: int) -> onnx.ModelProto:
    import torch
    from torch import nn
    from architectures import Block, ViT

    torch.manual_seed(0)
    vit = ViT()
    vit.blocks = nn.Sequential(*[Block(32, 4) for _ in range(depth)])
    f = io.BytesIO()
    torch.onnx.export(vit.eval(), torch.zeros(1, 3, 32, 32), f, dynamo=False, input_names=["input"],
                      output_names=["logits"], opset_version=17)
    return onnx.load_from_string(f.getvalue())


def cpu_seconds(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.process_time()
        result = fn()
        times.append(time.process_time() - start)
    return statistics.median(times), result


def measure(proto: onnx.ModelProto, size, repeats: int, sessions: bool) -> dict[str, float]:
    load, model = cpu_seconds(lambda: onnxplain.load(proto, preprocessing={"size": list(size)}), repeats)
    saliency = methods.get("saliency").request(model, None)
    t = {"load": load}
    t["saliency"], built = cpu_seconds(lambda: build(model.proto, saliency), repeats)

    def gradcam():
        model._layers = SessionCache()  # the layer search is part of Grad-CAM's first build
        return build(model.proto, methods.get("gradcam").request(model, cam_layer(model, None)))
    t["gradcam"], _ = cpu_seconds(gradcam, repeats)
    if sessions:
        t["session"], _ = cpu_seconds(lambda: Session(built, "cpu"), repeats)
    return t


def exponent(small: tuple[int, float], large: tuple[int, float]) -> float:
    return math.log(large[1] / small[1]) / math.log(large[0] / small[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--vit-depth", type=int, default=200, help="transformer blocks of the export (0: skip)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--sessions", action="store_true", help="also time onnxruntime's session creation")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    rows = []
    for n in args.sizes:
        t = measure(relu_chain(n), (8, 8), args.repeats, args.sessions)
        rows.append((n, t))
        print(f"relu chain, {n} nodes: " + ", ".join(f"{k} {v:.2f} s" for k, v in t.items()), flush=True)
    if args.vit_depth:
        start = time.process_time()
        vit = deep_vit(args.vit_depth)
        print(f"ViT with {args.vit_depth} blocks (torch export {time.process_time() - start:.0f} s), "
              f"{len(vit.graph.node)} nodes: ", end="", flush=True)
        t = measure(vit, (32, 32), args.repeats, args.sessions)
        print(", ".join(f"{k} {v:.2f} s" for k, v in t.items()), flush=True)
    ok = True
    for (n0, t0), (n1, t1) in zip(rows, rows[1:]):
        ks = {k: exponent((n0, t0[k]), (n1, t1[k])) for k in t0}
        print(f"growth exponent {n0} → {n1} nodes: " + ", ".join(f"{k} {v:.2f}" for k, v in ks.items()))
        ok &= max(ks["saliency"], ks["gradcam"]) <= BOUND
    for n, t in rows:
        if n == 20000:
            ok &= t["saliency"] + t["gradcam"] < MINUTE
    print("within bounds" if ok else f"over a bound (build exponent {BOUND}, 20000-node builds {MINUTE:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
