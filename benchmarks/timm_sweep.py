"""The timm architecture sweep: onnxplain's input gradient and Grad-CAM on torch exports of timm models, against torch
autograd in float64.

    /work/venv-timm/bin/python benchmarks/timm_sweep.py [--only NAME ...] [--variants] [--table docs/timm_sweep.md]

timm needs torchvision, which does not import beside the project's CPU torch: run it from an environment with
`torch torchvision timm onnxscript` and onnxplain installed (pip install -e .). Nothing is downloaded: weights are
timm's random init, with the parameters timm leaves constant (zero last-BatchNorm gammas, 1e-5 layer scales, zero
NF gains, which would leave residual branches without gradient) re-drawn from a seed, and BatchNorm statistics
measured on random images.

Per architecture and exporter (legacy `dynamo=False` at opset 17, `dynamo=True` at its default opset):
- the input gradient of each image's top class, against float64 autograd: L2 relative error and correlation. It
  passes when the error is within max(1e-2, 3x torch's own float32 error against float64) and the correlation is
  at least 0.999 (on ReLU nets float32 legitimately differs: activations within rounding of a kink);
- Grad-CAM at onnxplain's default layer, against its definition ReLU(sum_k mean(dy_c/dA_k) A_k) computed here from
  the exposed activation and gradient (relative error <= 1e-4).
With --variants, a few architectures also as opset-11, float16, QDQ int8 (straight-through gradient, compared with
the float model's: informative only) and dynamic height x width exports.

Results stream to a JSON-lines file (rerunning skips the finished cases); --table writes the markdown table.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

import onnxplain
from onnxplain.errors import first_line
from onnxplain.explain import cam_layer
from onnxplain.rewrite.graph import COTANGENT, GRAD, Request

HERE = Path(__file__).resolve().parent
CLASSES = 10
BATCH = 2
SEED = 0
FD_DIRECTIONS = 2
KINK_CHECK = 1e-4  # an input gradient error above float32 rounding: referee it along onnxplain's kinks

# (timm name, input size, extra create_model arguments): one small variant per family, CNNs first.
CNNS = [
    ("resnet18", 64, {}), ("resnext26ts", 64, {}), ("seresnet18", 64, {}), ("regnetx_002", 64, {}),
    ("resnest14d", 64, {}), ("res2net50_14w_8s", 64, {}), ("dla46_c", 64, {}), ("dpn48b", 64, {}),
    ("hrnet_w18_small", 64, {}), ("ghostnet_050", 64, {}), ("ghostnetv2_100", 64, {}), ("repvgg_a0", 64, {}),
    ("convnext_atto", 64, {}), ("efficientnet_b0", 64, {}), ("tf_efficientnet_b0", 64, {}),
    ("mobilenetv2_050", 64, {}), ("mobilenetv3_small_050", 64, {}), ("mobilenetv4_conv_small", 64, {}),
    ("mnasnet_small", 64, {}), ("densenet121", 64, {}), ("inception_v3", 96, {}), ("xception41", 64, {}),
    ("vgg11", 224, {}), ("rexnet_100", 64, {}), ("cspresnet50", 64, {}), ("cs3darknet_s", 64, {}),
    ("nf_resnet26", 64, {}), ("nf_regnet_b0", 64, {}), ("selecsls42b", 64, {}), ("mixnet_s", 64, {}),
    ("lcnet_050", 64, {}), ("ese_vovnet19b_dw", 64, {}), ("tresnet_m", 64, {}), ("hgnetv2_b0", 64, {}),
    ("repghostnet_050", 64, {}), ("mobileone_s0", 64, {}), ("gernet_s", 64, {}), ("inception_next_atto", 64, {}),
]
HYBRIDS = [
    ("efficientformer_l1", 224, {}), ("poolformer_s12", 64, {}), ("mobilevit_xxs", 64, {}),
    ("mobilevitv2_050", 64, {}), ("levit_128s", 224, {}), ("edgenext_xx_small", 64, {}),
    ("fastvit_t8", 64, {}), ("efficientvit_b0", 64, {}), ("repvit_m0_9", 64, {}), ("coat_lite_tiny", 224, {}),
    ("botnet26t_256", 64, {"img_size": 64}),
]
VITS = [
    ("vit_tiny_patch16_224", 64, {"img_size": 64}), ("deit_tiny_patch16_224", 64, {"img_size": 64}),
    ("swin_tiny_patch4_window7_224", 64, {"img_size": 64, "window_size": 4}),
    ("cait_xxs24_224", 64, {"img_size": 64, "depth": 4}), ("xcit_nano_12_p16_224", 64, {"img_size": 64}),
    ("pit_ti_224", 64, {"img_size": 64}), ("pvt_v2_b0", 64, {}), ("mixer_s16_224", 64, {"img_size": 64}),
]
ARCHS = {name: (size, kwargs) for name, size, kwargs in CNNS + HYBRIDS + VITS}
EXPORTERS = ("legacy", "dynamo")
VARIANT_ARCHS = ("resnet18", "tf_efficientnet_b0", "mobilenetv3_small_050", "convnext_atto", "levit_128s")
VARIANTS = ("opset11", "float16", "qdq_int8", "dynamic_hw")


def create(name: str) -> torch.nn.Module:
    """timm's random init, made to carry gradient everywhere: constant parameters re-drawn, BN statistics measured."""
    import timm
    size, kwargs = ARCHS[name]
    torch.manual_seed(SEED)
    model = timm.create_model(name, pretrained=False, num_classes=CLASSES, **kwargs)
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.numel() > 1 and bool((p == p.flatten()[0]).all()):
                p.copy_(redrawn(pname, float(p.flatten()[0]), torch.rand(p.shape, generator=generator)))
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
        if norms:
            model.train()
            for _ in range(4):
                model(torch.randn(8, 3, size, size, generator=generator))
    return model.eval()


def redrawn(name: str, value: float, fresh: torch.Tensor) -> torch.Tensor:
    """A constant parameter's random replacement: biases small around 0; scales that timm starts at 0 or 1e-5 (the
    gammas and gains that make residual branches identities at init) small but nonzero, so the branches carry
    gradient and the net stays well conditioned; the others (ones) around their value."""
    if name.endswith(("bias", "beta")):
        return 0.2 * (fresh - 0.5)
    if abs(value) < 1e-3:
        return 0.1 + 0.2 * fresh
    return value * (0.5 + fresh)


def export(model, path: Path, dynamo: bool, size: int, opset: int | None = None, dynamic_hw: bool = False,
           dtype=torch.float32) -> None:
    sample = torch.randn(BATCH, 3, size, size, dtype=dtype)
    if dynamo:
        extra = {"dynamic_shapes": ({0: torch.export.Dim("batch")},)}
    else:
        axes = {0: "batch", 2: "height", 3: "width"} if dynamic_hw else {0: "batch"}
        extra = {"dynamic_axes": {"input": axes, "logits": {0: "batch"}}, "opset_version": opset or 17}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (sample,), str(path), dynamo=dynamo, external_data=False, input_names=["input"],
                          output_names=["logits"], verbose=False, **extra)


def reference(model, x: np.ndarray):
    """Float64 autograd's input gradient of each image's top class, those classes, torch's float32 error, and central
    finite differences of the float64 model along random directions (a referee for autograd itself)."""
    def grad(net, dtype):
        xt = torch.from_numpy(x).to(dtype).requires_grad_()
        y = net(xt)
        targets = y.argmax(1)
        y.gather(1, targets[:, None]).sum().backward()
        return xt.grad.double().numpy(), targets.numpy()

    model64 = copy.deepcopy(model).double()
    g64, targets = grad(model64, torch.float64)
    g32, _ = grad(model.float(), torch.float32)

    def score(z):
        with torch.no_grad():
            return float(model64(torch.from_numpy(z)).gather(1, torch.from_numpy(targets)[:, None]).sum())

    rng, eps = np.random.default_rng(SEED + 1), 1e-5
    directions = [rng.standard_normal(x.shape) for _ in range(FD_DIRECTIONS)]
    x64 = x.astype(np.float64)
    fd = [(v, (score(x64 + eps * v) - score(x64 - eps * v)) / (2 * eps)) for v in directions]
    return g64, targets, l2(g32, g64), fd


def fd_error(grad: np.ndarray, fd) -> float:
    """The largest relative difference between the gradient's directional derivatives and finite differences."""
    return max(abs(float(np.sum(grad * v)) - d) / max(abs(d), 1e-12) for v, d in fd)


def l2(a, b) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def corr(a, b) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def explain(path: Path, x: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, str, float | str]:
    """onnxplain's raw input gradient of the targets' scores, and Grad-CAM's error against its definition."""
    m = onnxplain.load(path, device="cpu", preprocessing="unit")
    onehot = np.eye(m.num_classes, dtype=np.float32)[targets]
    (grad,) = m.session(Request(differentiate=(m.score,), wrt=(m.input,))).run(
        [GRAD.format(m.input)], {m.input: x, COTANGENT.format(m.score): onehot})
    try:
        layer = cam_layer(m, None)
        sess = m.session(Request(expose=(layer,), differentiate=(m.score,), wrt=(layer,)))
        a, g = (t.astype(np.float64) for t in sess.run([layer, GRAD.format(layer)],
                                                        {m.input: x, COTANGENT.format(m.score): onehot}))
        if a.ndim == 3:  # a transformer's tokens N×T×C: the patch tokens laid out on the grid (reshape_transform)
            h, w = m.grid_of(layer)
            a, g = (t[:, t.shape[1] - h * w:].reshape(len(t), h, w, -1).transpose(0, 3, 1, 2) for t in (a, g))
        axes = tuple(range(2, a.ndim))
        expected = np.maximum((g.mean(axis=axes, keepdims=True) * a).sum(axis=1), 0)
        e = onnxplain.explain(m, x, "gradcam", target=targets.tolist(), layer=layer)
        cam = float(np.abs(e.attributions - expected).max() / max(np.abs(expected).max(), 1e-30))
    except Exception as exc:  # noqa: BLE001 (recorded)
        layer, cam = "", f"{type(exc).__name__}: {first_line(exc)}"
    return grad.astype(np.float64), layer, cam


def along_kinks(model, path: Path, x: np.ndarray, targets: np.ndarray, g64: np.ndarray) -> dict:
    """A referee for ReLU nets whose gradient is off by more than float32 rounding: float64 autograd along
    onnxplain's own activation pattern (each ReLU's slope taken from the sign of its input in onnxplain's float32
    session, which exposes those inputs), against that session's gradient; and how many ReLU inputs have the other
    sign in float64. Agreement to ~1e-6 means the rules are exact and the error is activations within float32
    rounding of a kink. Exposing changes onnxruntime's fusions, so that session's error is reported beside it. Empty
    where the ONNX activations do not map one to one, in order, onto the calls of the torch activation modules."""
    acts = [n for n in onnx.load(str(path)).graph.node if n.op_type in ("Relu", "LeakyRelu")]
    m = onnxplain.load(path, device="cpu", preprocessing="unit")
    names = tuple(dict.fromkeys(n.input[0] for n in acts))
    if len(names) != len(acts):
        return {}
    onehot = np.eye(m.num_classes, dtype=np.float32)[targets]
    *pre, grad = m.session(Request(expose=names, differentiate=(m.score,), wrt=(m.input,))).run(
        [*names, GRAD.format(m.input)], {m.input: x, COTANGENT.format(m.score): onehot})
    model64 = copy.deepcopy(model).double()
    seen = []

    def masked(module, inputs, output):  # the activation with onnxplain's slopes: x * slope(sign of its x)
        i, z = len(seen), inputs[0]
        seen.append(z.detach().numpy())
        if i >= len(pre) or pre[i].shape != tuple(z.shape):
            return None
        return z * torch.from_numpy(np.where(pre[i] > 0, 1.0, getattr(module, "negative_slope", 0.0)))
    for module in model64.modules():
        if isinstance(module, (torch.nn.ReLU, torch.nn.LeakyReLU)):
            module.inplace = False
            module.register_forward_hook(masked)
    xt = torch.from_numpy(x).double().requires_grad_()
    model64(xt).gather(1, torch.from_numpy(targets)[:, None]).sum().backward()
    if len(seen) != len(pre) or any(a.shape != b.shape for a, b in zip(seen, pre)):
        return {}
    flips = sum(int(((a > 0) != (b > 0)).sum()) for a, b in zip(seen, pre))
    return {"kink_flips": flips, "kink_l2": l2(grad, xt.grad.numpy()), "kink_session_l2": l2(grad, g64)}


def case(name: str, variant: str, tmp: Path) -> dict:
    """One (architecture, exporter or variant) case's figures, or its error line."""
    size = ARCHS[name][0]
    row = {"arch": name, "variant": variant}
    try:
        model = create(name)
    except Exception as exc:  # noqa: BLE001 (recorded)
        return dict(row, stage="create", error=f"{type(exc).__name__}: {first_line(exc)}")
    x = np.random.default_rng(SEED).standard_normal((BATCH, 3, size, size)).astype(np.float32)
    path = tmp / f"{name}_{variant}.onnx"
    t0 = time.time()
    try:
        if variant == "float16":
            model = model.half()
            export(model, path, False, size, dtype=torch.float16)
            model = model.float()  # the reference: the float16-rounded weights, differentiated in float64
        else:
            export(model, path, variant == "dynamo", size, opset=11 if variant == "opset11" else None,
                   dynamic_hw=variant == "dynamic_hw")
        if variant == "qdq_int8":
            path = quantize(path, size)
    except Exception as exc:  # noqa: BLE001 (recorded)
        return dict(row, stage="export", error=f"{type(exc).__name__}: {first_line(exc)}")
    row["export_s"] = round(time.time() - t0, 1)
    g64, targets, err32, fd = reference(model, x)
    row.update(torch32=err32, torch_fd=fd_error(g64, fd))
    try:
        grad, layer, cam = explain(path, x, targets)
    except Exception as exc:  # noqa: BLE001 (recorded)
        tb = traceback.extract_tb(exc.__traceback__)[-1]
        return dict(row, stage="onnxplain", error=f"{type(exc).__name__}: {first_line(exc)}",
                    where=f"{Path(tb.filename).name}:{tb.lineno}")
    row.update(l2=l2(grad, g64), corr=corr(grad, g64), fd=fd_error(grad, fd), layer=layer, gradcam=cam)
    # float16: the exporter fuses and rounds weights in half precision, which the reference does not: correlation only
    bound = max(1e-2, 3 * err32) if variant != "float16" else np.inf
    row["pass"] = bool(row["l2"] <= bound and row["corr"] >= 0.999 and isinstance(cam, float) and cam <= 1e-4)
    if row["l2"] > KINK_CHECK and variant in EXPORTERS:
        try:
            row.update(along_kinks(model, path, x, targets, g64))
        except Exception as exc:  # noqa: BLE001 (recorded)
            row["kink_error"] = f"{type(exc).__name__}: {first_line(exc)}"
        if not row["pass"] and row.get("kink_flips") and row["kink_l2"] <= KINK_CHECK:
            row["pass"] = "kinks"  # beyond the bound, but the rules are exact along onnxplain's activation pattern
    if variant == "qdq_int8":  # the straight-through estimate is not the float gradient: recorded, not judged
        row["pass"] = None
    return row


def quantize(path: Path, size: int) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Random(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(1)
            self.batches = iter([{"input": rng.standard_normal((BATCH, 3, size, size)).astype(np.float32)}
                                 for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    out = path.with_name(path.stem + "_qdq.onnx")
    quantize_static(str(path), str(out), Random(), quant_format=QuantFormat.QDQ)
    return out


def cases(args) -> list[tuple[str, str]]:
    names = args.only or list(ARCHS)
    todo = [(n, e) for e in args.exporters for n in names]
    if args.variants:
        todo += [(n, v) for n in names if n in VARIANT_ARCHS or args.only for v in VARIANTS]
    return todo


def main():
    global BATCH
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", help="architectures (default: all)")
    parser.add_argument("--exporters", nargs="*", default=EXPORTERS, choices=EXPORTERS, help="in this order")
    parser.add_argument("--variants", action="store_true", help="also opset-11, float16, QDQ int8, dynamic HxW")
    parser.add_argument("--batch", type=int, default=BATCH, help="images per case (and the exported batch)")
    parser.add_argument("--results", type=Path, default=Path(tempfile.gettempdir()) / "timm_sweep.jsonl")
    parser.add_argument("--rerun", action="store_true", help="recompute cases already in --results")
    parser.add_argument("--table", type=Path, help="write the markdown results table here")
    args = parser.parse_args()
    BATCH = args.batch
    torch.set_num_threads(1)
    done = {}
    if args.results.exists():
        for line in args.results.read_text().splitlines():
            row = json.loads(line)
            done[row["arch"], row["variant"]] = row
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for name, variant in cases(args):
            if (name, variant) in done and not args.rerun:
                continue
            t0 = time.time()
            row = case(name, variant, Path(tmp))
            row["seconds"] = round(time.time() - t0, 1)
            done[name, variant] = row
            with args.results.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(summary(row), flush=True)
    print(f"sweep: {time.time() - start:.0f} s", file=sys.stderr)
    if args.table:
        args.table.write_text(table([done[c] for c in cases(args) if c in done]))


def summary(row: dict) -> str:
    head = f"{row['arch']:<30} {row['variant']:<10}"
    if "error" in row:
        return f"{head} FAIL at {row['stage']}: {row['error']}"
    cam = f"{row['gradcam']:.1e}" if isinstance(row["gradcam"], float) else row["gradcam"]
    verdict = {True: "pass", False: "FAIL", None: "info", "kinks": "kinks"}[row["pass"]]
    return (f"{head} {verdict}  l2 {row['l2']:.2e} (torch f32 {row['torch32']:.1e})  corr {row['corr']:.6f}  "
            f"fd {row['fd']:.1e} (torch {row['torch_fd']:.1e})  {kinks(row)}  gradcam {cam}  {row['seconds']} s")


def kinks(row: dict) -> str:
    if "kink_l2" not in row:
        return ""
    return (f"{row['kink_flips']} ReLU flipped, {row['kink_l2']:.0e} along them (session "
            f"{row['kink_session_l2']:.0e})")


def table(rows: list[dict]) -> str:
    lines = ["| architecture | case | result | L2 rel. error | torch float32 | correlation | finite diff. (torch) | "
             "kink referee | Grad-CAM | s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['arch']} | {r['variant']} | fails ({r['stage']}) | {r['error'][:160]} |||||||")
            continue
        cam = f"{r['gradcam']:.1e}" if isinstance(r["gradcam"], float) else r["gradcam"][:80]
        verdict = {True: "pass", False: "**FAIL**", None: "informative", "kinks": "kinks"}[r["pass"]]
        fd = f"{r['fd']:.0e} ({r['torch_fd']:.0e})" if "fd" in r else ""
        lines.append(f"| {r['arch']} | {r['variant']} | {verdict} | {r['l2']:.1e} | {r['torch32']:.1e} | "
                     f"{r['corr']:.6f} | {fd} | {kinks(r)} | {cam} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
