"""The CUDA path, checked in one command: `python benchmarks/device_check.py` (issue 19).

On the bundled MobileNetV2 and its two photos, for every method (the multi-pass ones with small settings, so the
whole check takes minutes):
- where onnxruntime places each node of the method's graph on a CUDA session: the nodes it runs on the CPU are
  listed (a silent CPU placement of a heavy op would make the "CUDA" path a CPU one);
- the maps on CUDA against the maps on the CPU (max |Δ| / max |map|), beside the same figure between two valid float32
  evaluations on the CPU (with and without onnxruntime's graph optimisations): input gradients through ReLU6 kinks
  drift by ~1e-2 between those too, as a unit just above a kink on one is below it on the other. A method passes
  when CUDA is within 1e-4 of the CPU, or within twice that CPU floor;
- the method's time over the plain forward time of the same model on the same device, each a median of repeats;
- onnxplain against Captum on torch CUDA with the same weights (Saliency and Grad-CAM), when torch, captum and the
  weights package are there.
`--resnet50` adds the issue's ResNet-50-class goals on a torchvision ResNet-50 (seeded random weights, exported here
with torch.onnx): forward, Saliency and Grad-CAM at batch 1 and 16, IG-50 and SmoothGrad-25 at batch 1, each over the
forward on the same device and against torch + Captum on the same weights and device (TF32 off on both sides), the
CUDA maps against the CPU's with and without onnxruntime's TF32, and where the Saliency graph's nodes run.
`--throughput` adds images per second on CUDA for forward, Grad-CAM and Saliency at batch 1, 16 and 64.
Without a usable CUDA provider it runs the CPU half and says that the rest was not run. `--json PATH` writes every
figure. `../shared/DEVICE.md` (outside the repository) tells how to bring onnxruntime-gpu to a lent GPU machine.
"""
from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import onnxplain  # noqa: E402
from onnxplain import methods, runtime  # noqa: E402
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
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return f"onnxruntime has no CUDA provider (available: {', '.join(ort.get_available_providers())})"
    try:
        onnxplain.load(MODEL, device="cuda").session(Request())
    except OnnxplainError as exc:
        return str(exc)
    return None


def placement(proto) -> collections.Counter:
    """(provider, op) → node count for one run of `proto` on a CUDA session, from onnxruntime's profile."""
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.log_severity_level = 3
    options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "placement")
    session = ort.InferenceSession(proto.SerializeToString(), options,
                                   providers=[(runtime.CUDA, runtime.CUDA_OPTIONS), runtime.CPU])
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


def relative(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b|."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def cpu_floor(name: str, x: np.ndarray, params: dict, maps: np.ndarray) -> float:
    """How far the method's maps move on the CPU when onnxruntime runs its graphs unoptimised (other kernels, other
    rounding): the error two valid float32 evaluations have between them."""
    runtime.OPTIMIZATION = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        model = onnxplain.load(MODEL, device="cpu")
        return relative(onnxplain.explain(model, x, name, batch_size=len(x), **params).maps, maps)
    finally:
        runtime.OPTIMIZATION = ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def check_method(name: str, models: dict, x: np.ndarray, repeats: int) -> dict:
    """Times per device, CUDA-vs-CPU map error (and the CPU's own floor) and CUDA placement of one method."""
    params = SMALL.get(name, {})
    row = {"method": name, "params": params}
    maps = {}
    for device, (model, fwd) in models.items():
        run = lambda: onnxplain.explain(model, x, name, batch_size=len(x), **params)  # noqa: E731
        maps[device] = run().maps
        row[f"{device}_ms"] = median_times([run], repeats, warmup=1)[0] * 1e3
        row[f"{device}_ratio"] = row[f"{device}_ms"] / fwd
    if "cuda" in models:
        row["rel_err"] = relative(maps["cuda"], maps["cpu"])
        row["cpu_floor"] = cpu_floor(name, x, params, maps["cpu"])
        row["ok"] = row["rel_err"] <= max(TOLERANCE, 2 * row["cpu_floor"])
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


def torch_resnet50():
    """torchvision's ResNet-50 with weights drawn from seed 0, in eval mode, or None without torchvision."""
    try:
        import torch
        import torchvision
    except ImportError as exc:
        print(f"(ResNet-50 skipped: {exc})")
        return None
    torch.manual_seed(0)
    return torchvision.models.resnet50(weights=None).eval()


def export(net, path: Path) -> None:
    """`net` to ONNX with a dynamic batch: the TorchScript exporter (opset 17) where torch still has it, else dynamo."""
    import torch
    x = torch.zeros(1, 3, 224, 224)
    try:
        torch.onnx.export(net, x, str(path), opset_version=17, dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    except Exception as exc:  # torch without the TorchScript exporter
        print(f"(TorchScript export failed: {type(exc).__name__}: {exc}; using dynamo)")
        torch.onnx.export(net, (x,), str(path), dynamo=True, input_names=["input"], output_names=["logits"],
                          dynamic_shapes={"x": {0: torch.export.Dim("N")}})


def resnet50_check(device: str, repeats: int) -> dict | None:
    """The issue's ResNet-50 goals on `device`: method / forward on one session, onnxplain / Captum on the same
    weights, and on CUDA the maps against the CPU's, with onnxruntime's TF32 off (onnxplain's default) and on."""
    net = torch_resnet50()
    if net is None:
        return None
    import torch
    path = Path(tempfile.mkdtemp()) / "resnet50.onnx"
    export(net, path)
    photos = onnxplain.load(MODEL, device="cpu")
    x16 = np.concatenate([as_batch(photos, IMAGES)[0]] * 8)
    x1, target = x16[:1], 281
    out = {}
    model = onnxplain.load(path, device=device, preprocessing="imagenet")
    if device == "cuda":
        cpu = onnxplain.load(path, device="cpu", preprocessing="imagenet")
        reference = {m: onnxplain.explain(cpu, x16[:2], m, target=target).maps.astype(np.float64)
                     for m in ("saliency", "gradcam")}
        for tf32 in ("0", "1"):
            runtime.CUDA_OPTIONS["use_tf32"] = tf32
            gpu = onnxplain.load(path, device="cuda", preprocessing="imagenet")
            out[f"rel_err_tf32_{tf32}"] = {
                m: float(np.abs(onnxplain.explain(gpu, x16[:2], m, target=target).maps - r).max() / np.abs(r).max())
                for m, r in reference.items()}
        runtime.CUDA_OPTIONS["use_tf32"] = "0"
        out["saliency_cpu_placed"] = cpu_nodes(placement(build(model.proto,
                                                               methods.get("saliency").request(model, None))))
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    net = net.to(device)
    captum = importlib.util.find_spec("captum") is not None
    if captum:
        from captum.attr import IntegratedGradients, LayerGradCam, NoiseTunnel, Saliency
    sigma = 0.15 * float(x1.max() - x1.min())
    def sync(fn):
        return (lambda: (fn(), torch.cuda.synchronize())) if device == "cuda" else fn
    cases = []  # (name, onnxplain, torch/Captum or None)
    for x in (x1, x16):
        xt = torch.tensor(x, device=device)
        def fwd_torch(xt=xt):
            with torch.no_grad():
                net(xt)
        n = len(x)
        cases += [(f"forward, batch {n}", lambda x=x: forward(model, x, batch_size=n), sync(fwd_torch)),
                  (f"saliency, batch {n}", lambda x=x: onnxplain.explain(model, x, "saliency", target=target),
                   captum and sync(lambda xt=xt: Saliency(net).attribute(xt.clone().requires_grad_(), target=target))),
                  (f"gradcam, batch {n}", lambda x=x: onnxplain.explain(model, x, "gradcam", target=target),
                   captum and sync(lambda xt=xt: LayerGradCam(net, net.layer4).attribute(xt, target=target)))]
    xt = torch.tensor(x1, device=device)
    cases += [("ig 50 steps, batch 1",
               lambda: onnxplain.explain(model, x1, "ig", target=target, steps=50, internal_batch_size=50),
               captum and sync(lambda: IntegratedGradients(net).attribute(xt, target=target, n_steps=50))),
              ("smoothgrad 25, batch 1",
               lambda: onnxplain.explain(model, x1, "smoothgrad", target=target, samples=25, internal_batch_size=25),
               captum and sync(lambda: NoiseTunnel(Saliency(net)).attribute(
                   xt, nt_type="smoothgrad", nt_samples=25, stdevs=sigma, target=target)))]
    fns = [f for _, ours, theirs in cases for f in (ours, theirs) if f]
    times = iter(median_times(fns, repeats, warmup=2))
    rows = {}
    for name, ours, theirs in cases:
        rows[name] = {"onnxplain_ms": next(times) * 1e3}
        if theirs:
            rows[name]["torch_ms"] = next(times) * 1e3
    for name, row in rows.items():
        n = name.split("batch ")[1]
        row["over_forward"] = row["onnxplain_ms"] / rows[f"forward, batch {n}"]["onnxplain_ms"]
        if "torch_ms" in row:
            row["torch_over_onnxplain"] = row["torch_ms"] / row["onnxplain_ms"]
    out["timings"] = rows
    print(f"\nResNet-50 (torchvision, seeded random weights) on {device}, median of {repeats}; TF32 off on both sides")
    if device == "cuda":
        print(f"  maps CUDA vs CPU, rel. err: TF32 off {out['rel_err_tf32_0']}, TF32 on {out['rel_err_tf32_1']}")
        print(f"  Saliency graph, nodes on the CPU: {out['saliency_cpu_placed']}")
    print(f"  {'':<24} {'onnxplain ms':>12} {'/forward':>9} {'torch ms':>9} {'torch/onnxplain':>16}")
    for name, r in rows.items():
        print(f"  {name:<24} {r['onnxplain_ms']:>12.2f} {r['over_forward']:>9.2f} {r.get('torch_ms', float('nan')):>9.2f}"
              f" {r.get('torch_over_onnxplain', float('nan')):>16.2f}")
    return out


def throughput(model, x: np.ndarray, repeats: int) -> dict:
    """Images per second of forward, Grad-CAM and Saliency at batch 1, 16 and 64 (preprocessed arrays, 64 images)."""
    x64 = np.concatenate([x] * (64 // len(x)))
    runs = {(m, b): (lambda m=m, b=b: forward(model, x64, batch_size=b) if m == "forward" else
                     onnxplain.explain(model, x64, m, batch_size=b))
            for m in ("forward", "gradcam", "saliency") for b in (1, 16, 64)}
    times = dict(zip(runs, median_times(list(runs.values()), repeats, warmup=1)))
    rates = {f"{m}, batch {b}": len(x64) / t for (m, b), t in times.items()}
    print(f"\nImages/s on {model.device}, 64 preprocessed images, median of {repeats}")
    for name, rate in rates.items():
        print(f"  {name:<20} {rate:>9.1f}")
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=sorted(methods.METHODS), help="methods to check")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--resnet50", action="store_true", help="ResNet-50 goals (torch and torchvision needed)")
    parser.add_argument("--throughput", action="store_true", help="images per second at batch 1, 16 and 64")
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
        header += f" {'cuda ms':>9} {'/fwd':>6} {'cuda vs cpu':>11} {'cpu floor':>9}  nodes on the CPU"
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
            ok &= row["ok"]
            line += (f" {row['cuda_ms']:>9.1f} {row['cuda_ratio']:>6.2f} {row['rel_err']:>11.1e}"
                     f" {row['cpu_floor']:>9.1e}{'' if row['ok'] else '!'}  {row.get('cpu_placed', '(several graphs)')}")
        print(line, flush=True)
    captum = None if why_not else captum_on_cuda(models["cuda"][0], x[:1], args.repeats * 5)
    if captum:
        print("\nbatch 1, CUDA, same weights   onnxplain ms   torch/Captum ms   onnxplain/Captum")
        for name, r in captum.items():
            print(f"  {name:<28} {r['onnxplain_ms']:>12.2f} {r['captum_ms']:>17.2f} {r['ratio']:>18.2f}")
    device = devices[-1]
    rates = throughput(models[device][0], x, args.repeats) if args.throughput else None
    resnet = resnet50_check(device, args.repeats * 3) if args.resnet50 else None
    if args.json:
        args.json.write_text(json.dumps({"cuda": why_not or "run", "forward_ms": {d: models[d][1] for d in devices},
                                         "methods": rows, "captum": captum, "throughput": rates,
                                         "resnet50": resnet}, indent=1))
    if not why_not and not ok:
        print(f"\nmaps marked ! differ between CUDA and the CPU by more than {TOLERANCE:g} and twice the CPU floor")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
