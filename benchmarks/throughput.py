"""Data-set throughput, measured in one run: `python benchmarks/throughput.py [--device cpu|cuda]`.

1. A folder of --images files (copies and crops of the bundled photos, in a temporary folder) explained with the
   bundled MobileNetV2 at batch 1, 16 and 64: images per second of every method through `onnxplain.explain_images`
   (files read on worker threads while onnxruntime runs), against the same model's plain batched inference over
   the same files, read the same way, and against Captum on the same weights (torch on the same device) fed by the
   same reader. Decoding is included everywhere. Within each batch size the runs take turns, --repeats times, and
   each figure is the median, so that drifts of a shared machine's speed hit them alike.
2. The host overhead of the multi-pass gradient methods: the time of one gradient row of IG (steps) and of
   SmoothGrad (samples), against Saliency's time per image at the same batch size (rows per onnxruntime run), on
   preprocessed arrays. Beside each, the floor: onnxruntime alone, nothing done on the host (the input-gradient
   session's time per row, plus the method's own forward rows). Ratios are taken within each repeat, and printed
   as the median and the range over the repeats.

Goals (issue 19): Grad-CAM at ≥ 0.9× the images/second of plain inference; no gradient method slower than Captum at
the same batch size; IG and SmoothGrad per row within 1.1× of Saliency per image. The exit status is 1 when one is
missed. `--device cuda` runs everything on onnxruntime's CUDA provider and torch's GPU.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import onnxplain  # noqa: E402
from onnxplain.explain import as_batch, forward  # noqa: E402
from onnxplain.methods.gradient import input_gradient  # noqa: E402
from onnxplain.rewrite.graph import GRAD, TARGET  # noqa: E402
from onnxplain.runtime import prefetched  # noqa: E402
from run import median_times, repeated_times, torch_mobilenet  # noqa: E402

MODEL = ROOT / "models" / "mobilenet_v2.onnx"
PHOTOS = [ROOT / "models" / "images" / "chelsea.png", ROOT / "models" / "images" / "coffee.png"]
TARGET_CLASS = 281
GRADCAM_GOAL, ROW_GOAL = 0.9, 1.1


def make_folder(n: int, root: Path) -> list[Path]:
    """n PNG files: the photos and crops of them (a different crop for each copy)."""
    from PIL import Image
    photos = [Image.open(p).convert("RGB") for p in PHOTOS]
    paths = []
    for i in range(n):
        im = photos[i % len(photos)]
        w, h = im.size
        d = (i // len(photos)) % 8 * 8
        paths.append(root / f"image{i:04d}.png")
        im.crop((d, d // 2, w - d, h - d // 2)).save(paths[-1])
    return paths


def settings(method: str, passes: int) -> dict:
    return {"ig": {"steps": passes}, "smoothgrad": {"samples": passes}}.get(method, {})


def read(model, paths: list[Path], batch: int):
    """The batches of `paths` as the pipeline reads them: on two worker threads, two batches ahead."""
    chunks = [paths[a:a + batch] for a in range(0, len(paths), batch)]
    return closing(prefetched(lambda chunk: as_batch(model, chunk)[0], chunks, 2, 2))


def plain(model, paths, batch):
    with read(model, paths, batch) as batches:
        for x in batches:
            forward(model, x, batch)


def ours(model, paths, batch, method, passes):
    for _ in onnxplain.explain_images(model, paths, method, target=TARGET_CLASS, batch_size=batch,
                                      **settings(method, passes)):
        pass


def captum_runner(net, device: str, method: str, passes: int):
    """Captum's attribution of a batch (torch tensor), the same method and settings, `batch` rows per pass; None
    for a method this benchmark has no Captum counterpart for."""
    import torch
    from captum.attr import (InputXGradient, IntegratedGradients, LayerAttribution, LayerGradCam, NoiseTunnel,
                             Saliency)

    def gradcam(x):
        low = LayerGradCam(net, net.features[18]).attribute(x, target=TARGET_CLASS, relu_attributions=True)
        return LayerAttribution.interpolate(low, x.shape[2:], "bilinear")

    runs = {"saliency": lambda x: Saliency(net).attribute(x.requires_grad_(), target=TARGET_CLASS),
            "gradxinput": lambda x: InputXGradient(net).attribute(x.requires_grad_(), target=TARGET_CLASS),
            "gradcam": gradcam,
            "ig": lambda x: IntegratedGradients(net).attribute(x, target=TARGET_CLASS, n_steps=passes,
                                                               internal_batch_size=len(x)),
            "smoothgrad": lambda x: NoiseTunnel(Saliency(net)).attribute(
                x, nt_type="smoothgrad", nt_samples=passes, nt_samples_batch_size=1, target=TARGET_CLASS,
                stdevs=0.15 * float(x.max() - x.min()))}
    if method not in runs:
        return None
    attribute = runs[method]

    def run(model, paths, batch):
        with read(model, paths, batch) as batches:
            for x in batches:
                attribute(torch.tensor(x, device=device))
                if device == "cuda":
                    torch.cuda.synchronize()
    return run


def folder_throughput(model, paths, batches, methods, passes, repeats, net, device) -> bool:
    ok = True
    print(f"\n1. {len(paths)} files, images/second (median of {repeats}; decode included), ratios to plain inference "
          f"and to Captum")
    print(f"{'batch':>5} {'method':<11} {'img/s':>8} {'/plain':>7} {'Captum img/s':>13} {'/Captum':>8}")
    for b in batches:
        runs = {"plain": lambda files, b=b: plain(model, files, b)}
        for m in methods:
            runs[m] = lambda files, m=m, b=b: ours(model, files, b, m, passes)
            theirs = captum_runner(net, device, m, passes) if net is not None else None
            if theirs is not None:
                runs[f"captum {m}"] = lambda files, theirs=theirs, b=b: theirs(model, files, b)
        for fn in runs.values():  # warm-up: sessions built, caches filled
            fn(paths[:b])
        times = dict(zip(runs, median_times([lambda fn=fn: fn(paths) for fn in runs.values()], repeats, warmup=0)))
        rate = {name: len(paths) / t for name, t in times.items()}
        print(f"{b:>5} {'plain':<11} {rate['plain']:>8.1f}")
        for m in methods:
            vs_plain = rate[m] / rate["plain"]
            vs_captum = rate[m] / rate[f"captum {m}"] if f"captum {m}" in rate else None
            if m == "gradcam":
                ok &= vs_plain >= GRADCAM_GOAL
            if vs_captum is not None:
                ok &= vs_captum >= 1
            captum = (f"{rate[f'captum {m}']:>13.1f} {vs_captum:>8.2f}{'' if vs_captum >= 1 else '  SLOWER'}"
                      if vs_captum is not None else f"{'-':>13} {'-':>8}")
            flag = "  UNDER" if m == "gradcam" and vs_plain < GRADCAM_GOAL else ""
            print(f"{b:>5} {m:<11} {rate[m]:>8.1f} {vs_plain:>7.2f} {captum}{flag}", flush=True)
    return ok


def per_row(model, x: np.ndarray, batches, passes: int, repeats: int) -> bool:
    """IG and SmoothGrad: time per gradient row (step or sample) over Saliency's time per image, at the same batch
    size: rows per onnxruntime run, Saliency's images and the others' steps or samples alike (`batch_size`, which
    IG and SmoothGrad take as their internal batch size). Beside them the floors, onnxruntime alone with nothing
    done on the host: the input-gradient session's time per row, and that plus the method's own forward rows per
    gradient row (IG: the image and its baseline; SmoothGrad: the clean image). The runs take turns; each ratio is
    taken within a repeat, and printed as the median and the range over the repeats."""
    print(f"\n2. time per gradient row / Saliency's per image, {passes} steps or samples per image; ratios within "
          f"each of {repeats} repeats, median [min-max]")
    print(f"{'batch':>5} {'saliency ms/img':>16} {'ig /sal':>17} {'ig floor':>17} {'smoothgrad /sal':>17} "
          f"{'sg floor':>17} {'gradient floor':>17}")
    ok = True
    session = model.session(input_gradient(model))
    for b in batches:
        images = np.repeat(x, -(-b // len(x)), axis=0)[:b]
        one = images[:max(1, b // passes)]  # the rows of one batch: b // passes images × passes
        rows = len(one) * passes
        feeds = {model.input: np.repeat(one, passes, axis=0), TARGET: np.full(rows, TARGET_CLASS, np.int64)}
        sal, ig, sg, grad, ig_fwd, sg_fwd = (np.array(t) for t in repeated_times([
            lambda: onnxplain.explain(model, images, "saliency", target=TARGET_CLASS, batch_size=b),
            lambda: onnxplain.explain(model, one, "ig", target=TARGET_CLASS, steps=passes, batch_size=b),
            lambda: onnxplain.explain(model, one, "smoothgrad", target=TARGET_CLASS, samples=passes, batch_size=b),
            lambda: session.run([GRAD.format(model.input)], feeds, b),
            lambda: forward(model, np.concatenate([one, one]), b),  # IG's: the image and its baseline
            lambda: forward(model, one, b)], repeats))  # SmoothGrad's: the clean image
        per_image = sal / b
        ratios = {"ig": ig / rows / per_image, "ig floor": (grad + ig_fwd) / rows / per_image,
                  "sg": sg / rows / per_image, "sg floor": (grad + sg_fwd) / rows / per_image,
                  "gradient floor": grad / rows / per_image}
        met = max(np.median(ratios["ig"]), np.median(ratios["sg"])) <= ROW_GOAL
        ok &= met
        shown = " ".join(f"{np.median(r):>5.2f} [{r.min():.2f}-{r.max():.2f}]" for r in ratios.values())
        print(f"{b:>5} {np.median(per_image) * 1e3:>16.1f} {shown}{'' if met else '  OVER'}", flush=True)
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--images", type=int, default=64, help="files in the folder")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--methods", nargs="+", default=["saliency", "gradxinput", "gradcam", "ig", "smoothgrad"],
                        help="any of `onnxplain methods` (Captum is compared for these five)")
    parser.add_argument("--passes", type=int, default=4, help="IG steps and SmoothGrad samples per image (part 1)")
    parser.add_argument("--row-passes", type=int, default=16, help="the same for part 2, the time per row")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--no-captum", action="store_true")
    args = parser.parse_args()
    model = onnxplain.load(MODEL, device=args.device)
    net = None if args.no_captum else torch_mobilenet()
    if net is not None:
        net = net.to(args.device)
    print(f"MobileNetV2 224x224, onnxruntime {args.device}, {time.strftime('%Y-%m-%d %H:%M')}")
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_folder(args.images, Path(tmp))
        ok = folder_throughput(model, paths, args.batches, args.methods, args.passes, args.repeats, net,
                                  args.device)
        x, _ = as_batch(model, PHOTOS)
    ok &= per_row(model, x, args.batches, args.row_passes, max(args.repeats, 3))
    print("\nall goals met" if ok else "\nSOME GOALS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
