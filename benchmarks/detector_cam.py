"""Default CAM layer of a real detector: `python benchmarks/detector_cam.py [--scenes 8]` from the repository root.

ddddocr's YOLOX character detector (the corpus file `ddddocr_det_yolox`, see benchmarks/coverage.py; its boxes
decoded from the grid, `--decoder yolox-raw`) on seeded synthetic captchas: four dark characters of the default
font on a light band. For each detection (after threshold 0.25 and NMS) Grad-CAM, HiResCAM and LayerCAM explain
its box at the default layer (the features of the box's scale) and at the old default (the last block end every
path to the head passes through); printed: the mean energy-based pointing game on the box (the share of the map's
positive mass inside it) and the pointing game (the map's maximum inside it), and the boxes' mean share of the image.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

import onnxplain
from onnxplain.explain import cam_layer
from onnxplain.metrics import energy_pointing_game, pointing_game
from onnxplain.targets import Box

CORPUS = Path.home() / ".cache" / "onnxplain" / "corpus" / "files" / "ddddocr_det_yolox.onnx"
METHODS = ("gradcam", "hirescam", "layercam")


def captcha(seed: int, size: int = 416) -> np.ndarray:
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (size, size), (114, 114, 114))
    draw = ImageDraw.Draw(im)
    draw.rectangle((0, 0, size - 1, 160), fill=(235, 235, 225))
    font = ImageFont.load_default(size=int(rng.integers(50, 70)))
    x = int(rng.integers(5, 40))
    for ch in rng.choice(list("ABCDEFGHKMNPRSTUWXYZ2345678"), 4):
        draw.text((x, int(rng.integers(10, 60))), str(ch), fill=tuple(int(v) for v in rng.integers(0, 90, 3)),
                  font=font)
        x += int(rng.integers(75, 100))
    return np.asarray(im)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=8)
    args = ap.parse_args()
    m = onnxplain.load(CORPUS, device="cpu", preprocessing={"scale": 1.0, "channel_order": "BGR"},
                       decoder="yolox-raw")
    old_layer = cam_layer(m, None)
    scores, shares = {}, []
    for seed in range(args.scenes):
        image = captcha(seed)
        for index in range(4):
            try:
                first = onnxplain.explain(m, [image], METHODS[0], target=Box(index=index))
            except onnxplain.OnnxplainError:  # fewer detections
                break
            x1, y1, x2, y2 = np.clip(np.round(first.info["box"][0]).astype(int), 0, [*m.input_size[::-1]] * 2)
            box = np.zeros((1, *m.input_size), bool)
            box[0, y1:y2, x1:x2] = True
            shares.append(box.mean())
            for method in METHODS:
                for which, layer in (("new", None), ("old", old_layer)):
                    e = onnxplain.explain(m, [image], method, target=Box(index=index), layer=layer)
                    scores.setdefault((method, which), []).append(
                        (energy_pointing_game(e.maps, box)[0], pointing_game(e.maps, box)[0]))
    print(f"ddddocr YOLOX, {len(shares)} detections on {args.scenes} captchas, boxes {np.mean(shares):.1%} of the "
          f"image; old default layer {old_layer}")
    for (method, which), rows in scores.items():
        energy, hit = np.mean(rows, axis=0)
        print(f"  {method:<9} {which} default: energy on the box {energy:.3f}, pointing game {hit:.3f}")


if __name__ == "__main__":
    main()
