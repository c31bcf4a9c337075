"""Image preprocessing: how a photo becomes the model's input tensor, read from a sidecar, metadata or a preset."""
from __future__ import annotations

import math
import reprlib
import warnings
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from .errors import OnnxplainError
from .limits import MAX_SIDE, check_memory, is_number, is_whole

_PIL_FILTERS = {"nearest": 0, "bilinear": 2, "bicubic": 3, "lanczos": 1}
MODES = {1: "L", 3: "RGB", 4: "RGBA"}  # Pillow's mode for images of each channel count
_IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


@dataclass(frozen=True)
class Preprocessing:
    layout: str = "NCHW"                 # NCHW or NHWC, found from the model when not given
    size: tuple[int, int] | None = None  # model input (H, W), found from the model when not given
    resize: int | None = None            # shorter side before a center crop; None: resize straight to `size`
    interpolation: str = "bilinear"
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    channel_order: str = "RGB"
    channels: int = 3                    # 1 (grey), 3 (RGB) or 4 (RGBA), found from the model when not given

    @classmethod
    def from_dict(cls, d: dict, base: "Preprocessing | None" = None) -> "Preprocessing":
        if not isinstance(d, dict):
            raise OnnxplainError(f"preprocessing must be an object of fields, not {reprlib.repr(d)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known - {"crop"})
        if unknown:
            raise OnnxplainError(f"unknown preprocessing field '{unknown[0]}' (known: {', '.join(sorted(known))})")
        if d.get("crop", "center") != "center":
            raise OnnxplainError(f"only a center crop is supported, not {reprlib.repr(d['crop'])}")
        for key, value in d.items():
            if key in known:
                _check(key, value)
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known}
        p = replace(base or cls(), **values)
        p.validate()
        return p

    def validate(self) -> None:
        """Every field of the right type and in a sensible range, so that pixels 0..255 become finite inputs."""
        for f in fields(self):
            _check(f.name, getattr(self, f.name))
        if len(self.mean) != len(self.std):
            raise OnnxplainError(f"preprocessing mean {list(self.mean)} and std {list(self.std)} need the same length")

    def for_channels(self, channels: int) -> "Preprocessing":
        """This preprocessing for images of `channels` channels: a mean and std equal across RGB (as the defaults and
        the `inception` preset) become one value that every channel shares."""
        mean, std = self.mean, self.std
        if len(mean) not in (1, channels) and len(set(mean)) == 1 and len(set(std)) == 1:
            mean, std = mean[:1], std[:1]
        if len(mean) not in (1, channels):
            raise OnnxplainError(f"preprocessing mean and std have {len(mean)} values for {channels} channels; give "
                                 f"1 or {channels}")
        return replace(self, channels=channels, mean=mean, std=std)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


PRESETS = {
    "imagenet": Preprocessing(resize=256, **_IMAGENET),        # torchvision classification models
    "imagenet-noresize": Preprocessing(**_IMAGENET),
    "inception": Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),  # [-1, 1]
    "caffe": Preprocessing(scale=1.0, mean=(103.939, 116.779, 123.68), channel_order="BGR"),
    "unit": Preprocessing(),                                   # [0, 1], no normalisation
}


def _number(v) -> bool:
    return is_number(v) and math.isfinite(v)


def _side(v) -> bool:
    return is_whole(v) and 1 <= v <= MAX_SIDE


def _per_channel(v, within) -> bool:
    return isinstance(v, (list, tuple)) and len(v) in MODES and all(_number(c) and within(abs(c)) for c in v)


_BOUND = 1e6  # |scale|, |mean| and |std| within [1/_BOUND, _BOUND]: pixels 0..255 map to values within ±3e14
FIELDS = {  # preprocessing field: (whether a value is valid, what is expected), as docs/sidecar.schema.json says
    "layout": (lambda v: v in ("NCHW", "NHWC"), "NCHW or NHWC"),
    "size": (lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(map(_side, v)),
             f"[height, width], two whole numbers from 1 to {MAX_SIDE}"),
    "resize": (lambda v: v is None or _side(v), f"null or a whole number of pixels from 1 to {MAX_SIDE}"),
    "interpolation": (lambda v: isinstance(v, str) and v in _PIL_FILTERS, f"one of {', '.join(_PIL_FILTERS)}"),
    "scale": (lambda v: _number(v) and 1 / _BOUND <= abs(v) <= _BOUND, "a number with 1e-6 ≤ |scale| ≤ 1e6"),
    "mean": (lambda v: _per_channel(v, lambda c: c <= _BOUND),
             "1, 3 or 4 numbers (one for all channels, or one each) within ±1e6"),
    "std": (lambda v: _per_channel(v, lambda c: 1 / _BOUND <= c <= _BOUND),
            "1, 3 or 4 numbers (one for all channels, or one each) with 1e-6 ≤ |std| ≤ 1e6"),
    "channel_order": (lambda v: v in ("RGB", "BGR"), "RGB or BGR"),
    "channels": (lambda v: is_whole(v) and v in MODES,
                 "1 (grey), 3 (RGB) or 4 (RGBA)"),
}


def _check(key: str, value) -> None:
    valid, expected = FIELDS[key]
    if not (key == "size" and value is None) and not valid(value):
        shown = list(value) if isinstance(value, tuple) else value
        raise OnnxplainError(f"preprocessing {key} must be {expected}, not {reprlib.repr(shown)}")


def preset(name: str) -> Preprocessing:
    if not isinstance(name, str) or name not in PRESETS:
        raise OnnxplainError(f"unknown preprocessing preset '{name}' (known: {', '.join(PRESETS)})")
    return PRESETS[name]


def _pil():
    from PIL import Image
    return Image


@dataclass(frozen=True)
class Geometry:
    """Where the model's input lies in the photo: the photo (`original`, height × width) resized to `resized`, then
    the window of the input `size` at (`top`, `left`) cut out of it (top = left = 0 when it is resized straight)."""
    original: tuple[int, int]
    resized: tuple[int, int]
    top: int
    left: int
    size: tuple[int, int]

    def to_photo(self, m: np.ndarray, shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """An input-resolution map (H×W) carried back onto the photo, drawn at `shape` (default: its own size):
        bilinear, with the pixel centres that the resize and crop map onto each other (as Pillow's resize does).
        Returns (map on the photo, whether each photo pixel lies inside the crop)."""
        shape = self.original if shape is None else shape
        (ry, iy), (rx, ix) = (_back(n, r, o, offset) for n, r, o, offset in
                              zip(self.size, self.resized, shape, (self.top, self.left)))
        return ry @ np.asarray(m, np.float64) @ rx.T, iy[:, None] & ix[None, :]


def _back(n: int, resized: int, shown: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """One axis of `Geometry.to_photo`: the shown×n interpolation matrix from the crop's n pixels to the photo's
    `shown` pixels, and which photo pixels fall inside the crop."""
    at = (np.arange(shown) + 0.5) * resized / shown - 0.5 - offset  # each photo pixel's centre, in crop pixels
    inside = (at >= -0.5) & (at <= n - 0.5)
    at = np.clip(at, 0, n - 1)
    low = np.minimum(np.floor(at).astype(int), max(n - 2, 0))
    frac = at - low
    matrix = np.zeros((shown, n))
    matrix[np.arange(shown), low] = 1 - frac
    matrix[np.arange(shown), np.minimum(low + 1, n - 1)] += frac
    return matrix, inside


@dataclass(frozen=True)
class Photo:
    """One image prepared for the model: the view as the model sees it (uint8 H×W×C), the model input, the photo
    itself (uint8, its long side at most `SHOWN` pixels), where the view lies in it, and its file name's stem ("" for
    an image from memory)."""
    view: np.ndarray
    input: np.ndarray
    photo: np.ndarray
    geometry: Geometry
    name: str = ""


SHOWN = 2048  # the long side photos are kept at for overlays (a 24-megapixel photo would take 0.6 GB per map)


def open_image(source, p: Preprocessing):
    """A Pillow image in the model's mode (grey, RGB or RGBA), from a path, a Pillow image or a uint8 H×W(×C) array
    (grey, RGB or RGBA)."""
    Image = _pil()
    if isinstance(source, Image.Image):
        return _as_mode(source, "<Pillow image>", MODES[p.channels])
    if isinstance(source, np.ndarray):
        a = source[..., 0] if source.ndim == 3 and source.shape[2] == 1 else source
        if a.dtype != np.uint8 or a.ndim not in (2, 3) or a.ndim == 3 and a.shape[2] not in MODES:
            raise OnnxplainError(f"an image array must be uint8 H×W or H×W×C with 1, 3 or 4 channels, not "
                                 f"{a.dtype} of shape {tuple(source.shape)}")
        return _as_mode(Image.fromarray(a), "<array>", MODES[p.channels])
    path = Path(source)
    if not path.is_file():
        raise OnnxplainError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            if getattr(im, "n_frames", 1) > 1:
                warnings.warn(f"onnxplain: {path} holds {im.n_frames} frames; its first is explained")
            return _as_mode(im, path, MODES[p.channels])
    except OnnxplainError:
        raise
    except Exception as exc:
        raise OnnxplainError(f"cannot read image {path}: {exc}") from None


def prepare(source, p: Preprocessing) -> Photo:
    """Resize and crop an image (a path, a Pillow image or a uint8 array) as the model sees it."""
    image = open_image(source, p)
    where = source if isinstance(source, (str, Path)) else "the image"
    h, w = p.size
    resample = _PIL_FILTERS[p.interpolation]
    if p.resize:
        short, long_ = sorted(image.size)
        side = int(p.resize * long_ / short)  # the long side is floored, as torchvision's Resize does
        resized = (p.resize, side) if image.width <= image.height else (side, p.resize)
        _check_pixels(where, resized, f"resize {p.resize}")
        left, top = (resized[0] - w) // 2, (resized[1] - h) // 2
        view = image.resize(resized, resample).crop((left, top, left + w, top + h))
    else:
        _check_pixels(where, (w, h), f"size {h}×{w}")
        resized, left, top = (w, h), 0, 0
        view = image.resize((w, h), resample)
    view = np.asarray(view, dtype=np.uint8).reshape(h, w, p.channels)
    shrink = min(1.0, SHOWN / max(image.size))
    shown = image if shrink == 1 else image.resize((max(1, round(image.width * shrink)),
                                                     max(1, round(image.height * shrink))), _PIL_FILTERS["bilinear"])
    geometry = Geometry((image.height, image.width), (resized[1], resized[0]), top, left, (h, w))
    name = source if isinstance(source, (str, Path)) else getattr(source, "filename", "")
    return Photo(view, to_input(view, p), np.asarray(shown, np.uint8).reshape(shown.height, shown.width, -1),
                 geometry, Path(name).stem if name else "")


def read_image(path: str | Path, p: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """Open, resize and crop an image as the model sees it: returns (uint8 H×W×C view, grey, RGB or RGBA as the
    model has 1, 3 or 4 channels; model input C×H×W or H×W×C float32)."""
    photo = prepare(path, p)
    return photo.view, photo.input


def _check_pixels(path, size: tuple[int, int], by: str) -> None:
    """Refuse a resize to more pixels than Pillow opens in one image (its decompression-bomb bound) or than memory
    holds (the result and Pillow's intermediate pass)."""
    pixels, limit = size[0] * size[1], _pil().MAX_IMAGE_PIXELS
    if limit and pixels > limit:
        raise OnnxplainError(f"image {path} would be {size[0]}×{size[1]} pixels after {by}, more than the limit of "
                             f"{limit} pixels (Pillow's MAX_IMAGE_PIXELS); lower the resize or crop the image")
    check_memory(f"image {path} at {size[0]}×{size[1]} pixels after {by}", 8 * pixels, "lower the resize")


def _as_mode(im, path, mode: str):
    """8-bit grey, RGB or RGBA (`mode`). 16-bit grey maps its full range 0..65535 onto 0..255 (Pillow's own
    conversion clips it to white; older Pillows open 16-bit PNGs as mode I); 32-bit integer or float pixels have no
    defined range, so they are refused rather than guessed."""
    if im.mode.startswith("I;16") or (im.mode == "I" and im.format == "PNG"):
        im = _pil().fromarray(((np.asarray(im).astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8))
    elif im.mode in ("I", "F"):
        raise OnnxplainError(f"cannot read image {path}: its 32-bit {'integer' if im.mode == 'I' else 'float'} pixels "
                             "have no defined range; save it with 8- or 16-bit channels, or pass a preprocessed array")
    return im.convert(mode)


def _swap_rb(x: np.ndarray) -> np.ndarray:
    """RGB(A) ↔ BGR(A) on the last axis; grey stays."""
    return x if x.shape[-1] == 1 else x[..., [2, 1, 0, 3][:x.shape[-1]]]


def to_input(view: np.ndarray, p: Preprocessing) -> np.ndarray:
    """uint8 H×W×C (grey, RGB or RGBA) → normalised float32 in the model's layout and channel order."""
    x = view.astype(np.float32)
    if p.channel_order == "BGR":
        x = _swap_rb(x)
    x = (x * np.float32(p.scale) - np.asarray(p.mean, np.float32)) / np.asarray(p.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1) if p.layout == "NCHW" else x)


def to_view(x: np.ndarray, p: Preprocessing) -> np.ndarray:
    """The inverse of `to_input`: a model input back to a uint8 H×W×C picture (grey, RGB or RGBA) for overlays."""
    hwc = x.transpose(1, 2, 0) if p.layout == "NCHW" else x
    rgb = (hwc * np.asarray(p.std, np.float32) + np.asarray(p.mean, np.float32)) / np.float32(p.scale)
    if p.channel_order == "BGR":
        rgb = _swap_rb(rgb)
    return np.clip(rgb, 0, 255).round().astype(np.uint8)
