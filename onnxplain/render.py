"""Render maps, the one renderer of the CLI and `Explanation.plot/save`: overlays on the user's photo (the map
carried back through the resize and crop) or on the crop the model saw, colour scales per sign, a title and a
colorbar, PNG text metadata, side-by-side grids; raw arrays (.npy)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import OnnxplainError, writing

# Turbo colormap, polynomial fit by Mikhailov (Google, 2019), for maps of one sign.
_TURBO = np.array([
    [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
    [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
    [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],
])
# Diverging blue - white - red for signed evidence (for / against).
_BLUE, _WHITE, _RED = np.array([59, 76, 192]) / 255, np.ones(3), np.array([180, 4, 38]) / 255


def _tables(levels: int = 1025) -> tuple[np.ndarray, np.ndarray]:
    """The two colour maps as tables of `levels` colours (float32; odd, so that 0 of the diverging map is one entry,
    white): the tables colour a 2048×1582 photo in 0.15 s, the formulas took 1.4 to 2.3 s."""
    u = np.linspace(0, 1, levels)[:, None]
    turbo_ = np.clip((u ** np.arange(6)) @ _TURBO.T, 0, 1)
    v = np.linspace(-1, 1, levels)[:, None]
    diverging_ = np.where(v < 0, _WHITE + (_BLUE - _WHITE) * -v, _WHITE + (_RED - _WHITE) * v)
    return turbo_.astype(np.float32), diverging_.astype(np.float32)


_TURBO_TABLE, _DIVERGING_TABLE = _tables()


def _read(table: np.ndarray, u: np.ndarray) -> np.ndarray:
    return table[(np.clip(u, 0, 1) * (len(table) - 1)).round().astype(np.intp)]


def turbo(t: np.ndarray) -> np.ndarray:
    """[0, 1] → RGB in [0, 1]."""
    return _read(_TURBO_TABLE, np.asarray(t))


def diverging(t: np.ndarray) -> np.ndarray:
    """[-1, 1] → RGB in [0, 1]: blue for negative, white at zero, red for positive."""
    return _read(_DIVERGING_TABLE, (np.asarray(t) + 1) / 2)


def is_signed(m: np.ndarray) -> bool:
    return bool((m < 0).any() and (m > 0).any())


def rgb(view: np.ndarray) -> np.ndarray:
    """A uint8 H×W×3 picture of a grey (H×W or H×W×1), RGB or RGBA view (its alpha dropped: the overlay is opaque)."""
    view = view.reshape(*view.shape[:2], -1)
    return np.repeat(view, 3, axis=2) if view.shape[2] == 1 else view[..., :3]


@dataclass(frozen=True)
class Scale:
    """Map values → colours: [lo, hi] onto the turbo ramp, or, when `signed`, [-hi, hi] onto blue - white - red with 0
    white (neutral). `how` says how the bounds were chosen (for titles and metadata)."""
    lo: float
    hi: float
    signed: bool
    how: str

    def __call__(self, m: np.ndarray) -> np.ndarray:
        """[0, 1] (or [-1, 1] when signed), clipped at the bounds; a constant map (lo = hi) is all 0."""
        m = np.asarray(m, np.float64)
        if self.signed:
            return np.clip(m / self.hi, -1, 1) if self.hi > 0 else np.zeros_like(m)
        return np.clip((m - self.lo) / (self.hi - self.lo), 0, 1) if self.hi > self.lo else np.zeros_like(m)

    def colours(self, t: np.ndarray) -> np.ndarray:
        return diverging(t) if self.signed else turbo(t)


SCALES = {"minmax": None, "percentile": 98.0, "symmetric": 100.0}  # kind: its default percentile P


def default_scale(m: np.ndarray, pixel_level: bool) -> str:
    """Signed maps: symmetric around 0. One-sign maps: min-max, so that a map in a narrow band (RISE's) spans the
    whole ramp. Pixel-level maps (gradients, modified backward rules: a few pixels far above the rest) are clipped at
    the 98th percentile of |m| (symmetric) or the 2nd and 98th (one sign), as Captum's default `outlier_perc` of 2;
    smooth maps (CAM, black-box) at the 99.5th of |m| when signed."""
    if is_signed(m):
        return "symmetric:98" if pixel_level else "symmetric:99.5"
    return "percentile:98" if pixel_level else "minmax"


def colour_scale(m: np.ndarray, spec: str) -> Scale:
    """The Scale of map `m` for `spec`: minmax (its min and max), percentile[:P] (its (100 − P)th and Pth percentiles,
    P > 50, default 98) or symmetric[:P] (±the Pth percentile of |m|, default 100: its largest |value|)."""
    kind, _, given = str(spec).partition(":")
    p = _percent(spec, kind, given)
    m = np.asarray(m, np.float64)
    if kind == "symmetric":
        a = float(np.percentile(np.abs(m), p)) or float(np.abs(m).max())
        return Scale(-a, a, True, f"symmetric {p:g}")
    lo, hi = (m.min(), m.max()) if kind == "minmax" else np.percentile(m, [100 - p, p])
    return Scale(float(lo), float(hi), False, kind if kind == "minmax" else f"percentile {p:g}")


def _percent(spec, kind: str, given: str) -> float | None:
    if kind not in SCALES or kind == "minmax" and given:
        raise OnnxplainError(f"unknown colour scale {spec!r} (known: minmax, percentile[:P], symmetric[:P])")
    if kind == "minmax":
        return None
    try:
        p = float(given) if given else SCALES[kind]
    except ValueError:
        p = float("nan")
    low = 50 if kind == "percentile" else 0
    if not low < p <= 100:
        raise OnnxplainError(f"colour scale {spec!r}: P must be a number above {low} and at most 100")
    return p


def overlay(view: np.ndarray, m: np.ndarray, scale: Scale | None = None, inside: np.ndarray | None = None,
            alpha: float = 0.5) -> np.ndarray:
    """Blend the heat map `m` (H×W) over the uint8 H×W×C `view` (grey, RGB or RGBA): one-sign maps at `alpha`;
    signed maps transparent where the evidence is zero, more opaque where it is stronger. Pixels outside `inside`
    (the part of a photo the model did not see) are dimmed and left uncoloured."""
    if view.shape[:2] != m.shape:
        raise OnnxplainError(f"map of shape {m.shape} does not fit image of shape {view.shape[:2]}")
    view = rgb(view).astype(np.float32) / 255
    scale = colour_scale(m, default_scale(m, False)) if scale is None else scale
    t = scale(m).astype(np.float32)
    a = np.sqrt(np.abs(t))[..., None] * np.float32(0.9) if scale.signed else np.float32(alpha)  # √: weak evidence
    blended = (1 - a) * view + a * scale.colours(t)
    if inside is not None:
        blended = np.where(inside[..., None], blended, DIM * view)
    return (np.clip(blended, 0, 1) * 255).round().astype(np.uint8)


DIM = 0.35  # brightness of the photo outside the crop the model saw


def _font(size: int):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError):  # Pillow before 10.1, or without FreeType: its fixed bitmap font
        return ImageFont.load_default()


MIN_WIDTH = 224  # narrower pictures are enlarged (nearest neighbour, whole factors) so that titles stay readable


def panel(picture: np.ndarray, scale: Scale | None, title: str) -> np.ndarray:
    """The picture (uint8 H×W×3) with a title line above and, when a `scale` is given, its colorbar below (its ends
    and middle labelled with their values)."""
    from PIL import Image, ImageDraw
    grow = -(-MIN_WIDTH // picture.shape[1])
    picture = picture.repeat(grow, axis=0).repeat(grow, axis=1) if grow > 1 else picture
    h, w = picture.shape[:2]
    size = int(np.clip(w / 40, 11, 40))
    font, pad = _font(size), size // 2
    top, bar = size + 2 * pad, size
    canvas = Image.new("RGB", (w, top + h + (pad + bar + size + 2 * pad if scale else 0)), "white")
    canvas.paste(Image.fromarray(picture), (0, top))
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, pad), _fit(draw, title, font, w - 2 * pad), fill="black", font=font)
    if scale is not None:
        y, length = top + h + pad, w - 2 * pad
        values = np.linspace(-scale.hi if scale.signed else scale.lo, scale.hi, length)
        ramp = (scale.colours(scale(values)) * 255).round().astype(np.uint8)
        canvas.paste(Image.fromarray(np.repeat(ramp[None], bar, axis=0)), (pad, y))
        for x, v, anchor in ((pad, values[0], "la"), (w // 2, values[length // 2], "ma"), (w - pad, values[-1], "ra")):
            draw.text((x, y + bar + pad // 2), f"{0 if scale.signed and anchor == 'ma' else v:.3g}", fill="black",
                      font=font, anchor=anchor)
    return np.asarray(canvas)


def _fit(draw, text: str, font, width: int) -> str:
    """`text`, shortened with an ellipsis to fit `width` pixels."""
    while len(text) > 1 and draw.textlength(text, font=font) > width:
        text = text[:-2] + "…"
    return text


def tile(panels: list[np.ndarray], columns: int | None = None, gap: int = 8) -> np.ndarray:
    """Panels side by side (`columns` per row, default all in one row) on white, each centred in a cell of the
    largest panel's size."""
    columns = columns or len(panels)
    rows = -(-len(panels) // columns)
    ch, cw = max(p.shape[0] for p in panels), max(p.shape[1] for p in panels)
    out = np.full((rows * ch + (rows - 1) * gap, columns * cw + (columns - 1) * gap, 3), 255, np.uint8)
    for n, p in enumerate(panels):
        y, x = (n // columns) * (ch + gap) + (ch - p.shape[0]) // 2, (n % columns) * (cw + gap) + (cw - p.shape[1]) // 2
        out[y:y + p.shape[0], x:x + p.shape[1]] = p
    return out


VIEWS = ("original", "crop")


def figure(e, i: int = 0, k: int = 0, part: str | None = None, view: str = "original",
           scale: str | None = None) -> tuple[np.ndarray, dict]:
    """Explanation `e`'s map of image i (class k of several; a method's `part`) as a titled panel with its colorbar,
    and the PNG text metadata that goes with it. `view`: over the whole photo (the map carried back through the
    resize and crop, the area outside the crop dimmed), or over the crop the model saw (also what an input given as
    an array shows). `scale`: see `colour_scale` (default: `default_scale`)."""
    if view not in VIEWS:
        raise OnnxplainError(f"unknown view {view!r} (known: {', '.join(VIEWS)})")
    m = e.map(i, k, part)
    at = (i, k) if e.targets.ndim == 2 else (i,)
    c, score = int(e.targets[at]), float(e.scores[at])
    s = _scale_of(e, m, scale)
    photo = e.photos[i] if e.photos and view == "original" else None
    box, marks = e.info.get("box"), e.info.get("landmarks")  # a detection's, in input pixels: drawn in white
    outline = None if box is None else box_outline(m.shape, box[at])
    if marks is not None:
        outline = np.maximum(outline, points(m.shape, marks[at]))
    if photo is not None:
        shown, inside = photo.geometry.to_photo(m, photo.photo.shape[:2])
        picture = overlay(photo.photo, shown, s, inside)
        outline = None if outline is None else photo.geometry.to_photo(outline, photo.photo.shape[:2])[0]
    else:
        picture = overlay(e.views[i], m, s)
    if outline is not None:
        picture = np.where(outline[..., None] > 0.25, np.uint8(255), picture)
    model = e.model
    label = model.label(c) if model is not None else f"class {c}"
    p = model.probabilities(e.logits[i].astype(np.float64))[c] if model is not None else None
    what = e.method + (f" {part}" if part else "")
    title = f"{what} · {label} [{c}] · score {score:.3g}" + (f" · p {p:.2f}" if p is not None else "")
    text = {"Software": f"onnxplain {_version()}", "method": e.method, "target": str(c), "label": label,
            "score": f"{score:.6g}", "scale": f"{s.how}: {s.lo:.6g} to {s.hi:.6g}",
            "view": "original" if photo is not None else "crop"}
    if part:
        text["part"] = part
    if p is not None:
        text["probability"] = f"{p:.6g}"
    if model is not None and model.sha256:
        text["model_sha256"] = model.sha256
    return panel(picture, s, title), text


def _scale_of(e, m: np.ndarray, scale: str | None) -> Scale:
    """The colour scale of explanation `e`'s map `m`: `scale` when given, else the method's default."""
    from .methods import METHODS
    return colour_scale(m, scale or default_scale(m, METHODS[e.method].group in ("gradients", "modified")))


def small(e, i: int = 0, side: int = 256, scale: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Image i of explanation `e` and its map's overlay, small, for galleries and reports: (photo, overlay), uint8
    with the long side at most `side` pixels, without title or colorbar. The overlay is drawn as `figure` draws it over
    the whole photo (the map carried back through the resize and crop, the area outside the crop dimmed), or over the
    view the model saw for an input given as an array."""
    from PIL import Image
    m = e.map(i)
    photo = e.photos[i] if e.photos else None
    picture = rgb(photo.photo if photo is not None else e.views[i])
    h, w = picture.shape[:2]
    f = min(1.0, side / max(h, w))
    shape = (max(1, round(h * f)), max(1, round(w * f)))
    if shape != (h, w):
        picture = np.asarray(Image.fromarray(picture).resize(shape[::-1], Image.BILINEAR))
    if photo is None:
        shown, inside = np.asarray(Image.fromarray(m.astype(np.float32), "F").resize(shape[::-1], Image.BILINEAR)), None
    else:
        shown, inside = photo.geometry.to_photo(m, shape)
    return picture, overlay(picture, shown, _scale_of(e, m, scale), inside)


def grid(explanations: list, i: int = 0, view: str = "original", scale: str | None = None) -> tuple[np.ndarray, dict]:
    """Image i explained by several methods (one Explanation each) and classes, side by side as SHAP's image plot:
    the photo (or the crop, for view='crop' or an array input) first, then one panel per method and class; with its
    PNG text metadata (each panel's method, class and scale)."""
    first = explanations[0]
    photo = first.photos[i].photo if first.photos and view == "original" else first.views[i]
    name = first.photos[i].name if first.photos and first.photos[i].name else f"image {i}"
    figures = [figure(e, i, k, view=view, scale=scale) for e in explanations
               for k in range(e.targets.shape[1] if e.targets.ndim == 2 else 1)]
    texts = [text for _, text in figures]
    text = {**{key: texts[0][key] for key in ("Software", "view", "model_sha256") if key in texts[0]},
            "panels": "; ".join(f"{t['method']} {t['target']} ({t['scale']})" for t in texts)}
    return tile([panel(rgb(photo), None, name)] + [picture for picture, _ in figures]), text


def file_names(folder: Path, stem: str, method: str, classes: list[int] | None) -> list[list[tuple[Path, Path]]]:
    """The (PNG, .npy) paths of an image's maps: per class explained (`classes`, when several; None: one), the map
    and then the method's parts."""
    from .methods import METHODS
    parts = ("",) + tuple(f".{name}" for name in METHODS[method].parts)
    return [[(folder / f"{stem}.{method}{'' if c is None else f'.{c}'}{part}.png",
              folder / f"{stem}.{method}{'' if c is None else f'.{c}'}{part}.npy") for part in parts]
            for c in (classes or [None])]


def save(e, i: int, k: int, paths: list[tuple[Path, Path]], view: str = "original", scale: str | None = None) -> None:
    """Write image i's (class k's) overlay and raw map, then its parts', to `paths` (from `file_names`)."""
    from .methods import METHODS
    for part, (png, npy) in zip((None, *METHODS[e.method].parts), paths):
        picture, text = figure(e, i, k, part, view, scale)
        save_png(png, picture, text)
        save_npy(npy, e.map(i, k, part))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("onnxplain")
    except PackageNotFoundError:
        return "unknown"


def box_outline(shape: tuple[int, int], box, width: int = 2) -> np.ndarray:
    """An H×W float mask, 1 on the outline of the box (x1, y1, x2, y2 in its pixels), `width` pixels wide."""
    h, w = shape
    out = np.zeros(shape, np.float32)
    x1, y1, x2, y2 = (int(round(v)) for v in np.clip(box, 0, [w - 1, h - 1, w - 1, h - 1]))
    out[y1:y1 + width, x1:x2 + 1] = 1
    out[max(y2 - width + 1, 0):y2 + 1, x1:x2 + 1] = 1
    out[y1:y2 + 1, x1:x1 + width] = 1
    out[y1:y2 + 1, max(x2 - width + 1, 0):x2 + 1] = 1
    return out


def points(shape: tuple[int, int], xy, radius: int = 2) -> np.ndarray:
    """An H×W float mask, 1 on a square of side 2·radius + 1 pixels about each point (x, y in its pixels)."""
    out = np.zeros(shape, np.float32)
    for x, y in np.round(np.asarray(xy, np.float64)).astype(int):
        out[max(y - radius, 0):max(y + radius + 1, 0), max(x - radius, 0):max(x + radius + 1, 0)] = 1
    return out


def check_writable(paths: list[Path], force: bool) -> None:
    """Refuse, before any work, to replace what is at an output path (a file, or a link, even a dangling one) unless
    `force`, or to start where the results cannot be written. Folders are made at the first write (`writing`), so a
    run that fails leaves none behind; files are renamed into place, so a link is replaced, never written through."""
    existing = [p for p in paths if os.path.lexists(p)]
    if existing and not force:
        raise OnnxplainError(f"{existing[0]} exists (and {len(existing) - 1} more); use --force to overwrite"
                             if len(existing) > 1 else f"{existing[0]} exists; use --force to overwrite")
    for folder in dict.fromkeys(Path(p).parent for p in paths):
        made = next(f for f in (folder, *folder.parents) if f.exists())  # the folder, or the nearest one above it
        if not made.is_dir():
            raise OnnxplainError(f"cannot write {folder}: {made} is not a folder")
        if not os.access(made, os.W_OK | os.X_OK):
            raise OnnxplainError(f"cannot write {folder}: permission denied")


def save_png(path: Path, picture: np.ndarray, text: dict | None = None) -> None:
    """Write a uint8 picture as PNG, with `text` as its text chunks (key: value)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo
    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_itxt(key, value)
    with writing(path) as tmp:
        Image.fromarray(picture).save(tmp, format="PNG", pnginfo=info)


def save_npy(path: Path, a: np.ndarray) -> None:
    with writing(path) as tmp:
        np.save(tmp, a)
