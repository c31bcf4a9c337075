"""The CUDA path, checked in one command: `python benchmarks/device_check.py` (issue 19).

On the bundled MobileNetV2 and its two photos, for every method (the multi-pass ones with small settings, so the
whole check takes minutes):
- where onnxruntime places each node of the method's graph on a CUDA session: the nodes it runs on the CPU are
  listed (a silent CPU placement of a heavy op would make the "CUDA" path a CPU one);
- the maps on CUDA against the maps on the CPU (max |Δ| / max |map|; float32, so kinks of ReLU6 aside, ≤ 1e-4);
- the method's time over the plain forward time of the same model on the same device, each a median of repeats;
- onnxplain against Captum on torch CUDA with the same weights (Saliency, Grad-CAM, IG and SmoothGrad), when torch,
  captum and the weights package are there.
Without a usable CUDA provider it runs the CPU half and says that the rest was not run. `--json PATH` writes every
figure. `../shared/DEVICE.md` (outside the repository) tells how to bring onnxruntime-gpu to a lent GPU machine.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import onnxplain  # noqa: E402
from onnxplain import methods  # noqa: E402
from onnxplain.explain import as_batch, cam_layer, forward  # noqa: E402
from onnxplain.errors import OnnxplainError  # noqa: E402
from onnxplain.rewrite.graph import Request, build  # noqa: E402
from run import captum_reference, median_times, torch_mobilenet  # noqa: E402

MODEL = ROOT / "models" / "mobilenet_v2.onnx"
IMAGES = [ROOT / "models" / "images" / "chelsea.png", ROOT / "models" / "images" / "coffee.png"]
SMALL = {  # settings that keep each multi-pass method to seconds on a CPU; one-graph methods take none
    "ig": {"steps": 16}, "smoothgrad": {"samples": 8}, "smoothgrad2": {"samples": 8}, "vargrad": {"samples": 8},
    "scorecam": {"channels": 64}, "occlusion": {"window": 56, "stride": 56}, "rise": {"masks": 256},
    "lime": {"samples": 64}, "kernelshap": {"samples": 64}, "pda": {"window": 28, "stride": 28, "samples": 2},
    "evidence": {"window": 28, "stride": 28}, "evidence_hidden": {"window": 3, "stride": 3, "samples": 2},
    "fgvis": {"iterations": 10}, "undesirable": {"window": 56, "stride": 56}, "sise": {"mu": 0.5},
}
TOLERANCE = 1e-4


def cuda_status() -> str | None:
    """None when a CUDA session starts here, else why not (one line)."""
    import onnxruntime as ort
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return f"onnxruntime has no CUDA provider (available: {', '.join(ort.get_available_providers())})"
    try:
        onnxplain.load(MODEL, device="cuda").session(Request())
    except OnnxplainError as exc:
        return str(exc)
    return None


def placement(proto) -> collections.Counter:
    """(provider, op) → node count for one run of `proto` on a CUDA session, from onnxruntime's profile."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.log_severity_level = 3
    options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "placement")
    session = ort.InferenceSession(proto.SerializeToString(), options,
                                   providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    feeds = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in i.shape]
        feeds[i.name] = (np.full(shape, -1, np.int64) if "int64" in i.type else np.random.default_rng(0).random(
            shape, np.float32))
    session.run(None, feeds)
    with open(session.end_profiling()) as f:
        events = [e for e in json.load(f) if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    return collections.Counter((e["args"].get("provider", "?"), e["args"].get("op_name", "?")) for e in events)


def cpu_nodes(counts: collections.Counter) -> str:
    """The ops placed on the CPU, e.g. 'Shape×3, Gather×1', or '-' when none."""
    cpu = {op: n for (provider, op), n in counts.items() if provider == "CPUExecutionProvider"}
    return ", ".join(f"{op}×{n}" for op, n in sorted(cpu.items())) or "-"


def check_method(name: str, models: dict, x: np.ndarray, repeats: int) -> dict:
    """Times per device, CUDA-vs-CPU map error and CUDA placement of one method."""
    params = SMALL.get(name, {})
    row = {"method": name, "params": params}
    maps = {}
    for device, (model, fwd) in models.items():
        run = lambda: onnxplain.explain(model, x, name, batch_size=len(x), **params)  # noqa: E731
        maps[device] = run().maps
        row[f"{device}_ms"] = median_times([run], repeats, warmup=1)[0] * 1e3
        row[f"{device}_ratio"] = row[f"{device}_ms"] / fwd
    if "cuda" in models:
        cpu, gpu = maps["cpu"].astype(np.float64), maps["cuda"].astype(np.float64)
        row["rel_err"] = float(np.abs(gpu - cpu).max() / max(np.abs(cpu).max(), 1e-30))
        method = methods.get(name, **params)
        if method.one_graph:
            model = models["cuda"][0]
            layer = cam_layer(model, None) if method.at_layer else None
            row["cpu_placed"] = cpu_nodes(placement(build(model.proto, method.request(model, layer))))
    return row


def captum_on_cuda(model, x: np.ndarray, repeats: int) -> dict | None:
    """onnxplain on CUDA over torch + Captum on CUDA, same weights, batch 1 (None without the references)."""
    net = torch_mobilenet()
    if net is None:
        return None
    import torch
    if not torch.cuda.is_available():
        print("(Captum on CUDA skipped: torch sees no GPU)")
        return None
    theirs = captum_reference(net.cuda(), x, repeats, device="cuda")
    ours = dict(zip(theirs, median_times([lambda: forward(model, x, batch_size=1),
                                          lambda: onnxplain.explain(model, x, "saliency", target=281),
                                          lambda: onnxplain.explain(model, x, "gradcam", target=281)], repeats)))
    return {name: {"onnxplain_ms": ours[name] * 1e3, "captum_ms": theirs[name] * 1e3,
                   "ratio": ours[name] / theirs[name]} for name in theirs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=sorted(methods.METHODS), help="methods to check")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    unknown = sorted(set(args.methods) - set(methods.METHODS))
    if unknown:
        parser.error(f"unknown methods: {', '.join(unknown)}")
    why_not = cuda_status()
    devices = ["cpu"] if why_not else ["cpu", "cuda"]
    models = {}
    for device in devices:
        model = onnxplain.load(MODEL, device=device)
        x, _ = as_batch(model, IMAGES)
        fwd = median_times([lambda: forward(model, x, batch_size=len(x))], args.repeats * 3)[0] * 1e3
        models[device] = (model, fwd)
    print(f"MobileNetV2 224x224, batch {len(x)}, median of {args.repeats}; forward "
          + ", ".join(f"{d} {models[d][1]:.1f} ms" for d in devices))
    print(f"CUDA half NOT RUN: {why_not}" if why_not else "CUDA provider running")
    header = f"{'method':<16} {'cpu ms':>9} {'/fwd':>6}"
    if not why_not:
        header += f" {'cuda ms':>9} {'/fwd':>6} {'cuda vs cpu':>11}  nodes on the CPU"
    print(header)
    rows, ok = [], True
    for name in args.methods:
        try:
            row = check_method(name, models, x, args.repeats)
        except OnnxplainError as exc:
            ok = False
            rows.append({"method": name, "error": str(exc)})
            print(f"{name:<16} FAILED: {exc}")
            continue
        rows.append(row)
        line = f"{name:<16} {row['cpu_ms']:>9.1f} {row['cpu_ratio']:>6.2f}"
        if not why_not:
            ok &= row["rel_err"] <= TOLERANCE
            line += (f" {row['cuda_ms']:>9.1f} {row['cuda_ratio']:>6.2f} {row['rel_err']:>11.1e}"
                     f"{'' if row['rel_err'] <= TOLERANCE else '!'}  {row.get('cpu_placed', '(several graphs)')}")
        print(line, flush=True)
    captum = None if why_not else captum_on_cuda(models["cuda"][0], x[:1], args.repeats * 5)
    if captum:
        print("\nbatch 1, CUDA, same weights   onnxplain ms   torch/Captum ms   onnxplain/Captum")
        for name, r in captum.items():
            print(f"  {name:<28} {r['onnxplain_ms']:>12.2f} {r['captum_ms']:>17.2f} {r['ratio']:>18.2f}")
    if args.json:
        args.json.write_text(json.dumps({"cuda": why_not or "run", "forward_ms": {d: models[d][1] for d in devices},
                                         "methods": rows, "captum": captum}, indent=1))
    if not why_not and not ok:
        print(f"\nmaps marked ! differ between CUDA and the CPU by more than {TOLERANCE:g} (relative)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
