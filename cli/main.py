"""onnxplain command line: inspect, explain, methods, export."""
from __future__ import annotations

import os
import sys
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import numpy as np

import onnxplain
from onnxplain import methods as method_registry
from onnxplain import targets
from onnxplain.detection import DECODERS
from onnxplain.errors import OnnxplainError
from onnxplain.explain import candidate_layers, cam_layer
from onnxplain.export import export as export_graph
from onnxplain.preprocess import PRESETS
from onnxplain.render import VIEWS, check_writable, file_names, save, save_png
from onnxplain.render import colour_scale as colour_scale_of
from onnxplain.render import grid as grid_of
from onnxplain.rewrite.graph import opset_of, unsupported_ops

MODEL = click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
DEVICE = click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True)
_PREPROCESSING = [
    click.option("--preset", type=click.Choice(sorted(PRESETS)), help="Preprocessing preset (the flags below "
                 "override it, and both override the model's sidecar JSON or metadata)."),
    click.option("--size", type=int, nargs=2, metavar="H W", help="Model input height and width."),
    click.option("--resize", type=int, help="Shorter side before a center crop (default: resize to --size)."),
    click.option("--scale", type=float, help="Multiplier from 0..255 pixel values (default 1/255)."),
    click.option("--mean", type=float, nargs=3, metavar="R G B", help="Subtracted after scaling."),
    click.option("--std", type=float, nargs=3, metavar="R G B", help="Divided by after the mean."),
    click.option("--channel-order", type=click.Choice(["RGB", "BGR"])),
    click.option("--layout", type=click.Choice(["NCHW", "NHWC"])),
]


def PREPROCESSING(command):
    """Add the preprocessing options; the command receives them as keyword arguments."""
    for option in reversed(_PREPROCESSING):
        command = option(command)
    return command


def _preprocessing(options: dict) -> dict | None:
    """The preprocessing options given on the command line, as `onnxplain.load` takes them."""
    given = {k: v for k, v in options.items() if v is not None and v != ()}
    return given or None
def OUTPUT(command):
    """--output and --decoder: which output the scores (or the default target) come from."""
    command = click.option("--decoder", type=click.Choice(DECODERS), default=None,
                           help="A detector's raw-head layout, when the output shapes do not tell it.")(command)
    return click.option("--output", "output", default=None, metavar="NAME",
                        help="The output holding the class scores or read by the default target, for models with "
                             "several (see `onnxplain inspect`).")(command)
QUANTIZED = click.option("--quantized", type=click.Choice(["ste", "exact"]), default="ste", show_default=True,
                         help="Gradients of quantised models: straight through each quantiser within its range "
                              "(ste), or exact (zero: gradient methods refuse).")
BATCH = click.option("--batch-size", type=click.IntRange(1, 65536), default=16, show_default=True,
                     help="Images (or perturbed copies) per model run.")
PROBS = click.option("--probabilities", is_flag=True, help="Explain the Softmax output rather than its input logits.")
PARAM = click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE",
                     help="Method parameter, repeatable (e.g. -p masks=2000 -p baseline=blur); see the method's docs.")


def _params(pairs) -> dict:
    """KEY=VALUE pairs as method parameters; values read as Python literals (numbers, tuples) or else text."""
    import ast
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise OnnxplainError(f"parameter '{pair}' is not KEY=VALUE")
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip()] = value
    return out


class _Progress:
    """A click progress bar fed by the library's progress(done, total) callbacks (one bar per run)."""

    def __init__(self, label: str):
        self.label, self.bar, self.done = label, None, 0

    def __call__(self, done: int, total: int):
        if self.bar is None or done < self.done:
            self.close()
            self.bar = click.progressbar(length=total, label=self.label, file=sys.stderr,
                                         hidden=not sys.stderr.isatty())
            self.bar.__enter__()
            self.done = 0
        self.bar.update(done - self.done)
        self.done = done
        if done >= total:
            self.close()

    def close(self):
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def _with_progress(method: str, params: dict) -> dict:
    """Methods that report progress (the black-box ones: thousands of model calls) get a progress bar."""
    cls = method_registry.METHODS.get(method)
    if cls is None or not cls.accepts("progress") or "progress" in params:
        return params
    return {**params, "progress": _Progress(method)}


def _load(model: Path, pre: dict, device: str = "auto", probabilities: bool = False, batch_size: int = 16):
    """Load `model` with the preprocessing options and --output found in `pre` (the command's other options)."""
    output, quantized, decoder = pre.pop("output", None), pre.pop("quantized", "ste"), pre.pop("decoder", None)
    return onnxplain.load(model, preprocessing=_preprocessing(pre), device=device, probabilities=probabilities,
                          batch_size=batch_size, output=output, quantized=quantized, decoder=decoder)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="onnxplain")
def cli():
    """Explain image classifiers from their exported ONNX file."""


@cli.command()
@MODEL
@PREPROCESSING
@OUTPUT
@QUANTIZED
def inspect(model, **pre):
    """Show inputs, outputs, preprocessing, CAM layers and ops without a gradient rule."""
    m = _load(model, pre)
    p = m.preprocessing
    click.echo(f"model      {model}  (opset {opset_of(m.proto)}, {len(m.proto.graph.node)} nodes)")
    size = f"{p.size[0]}x{p.size[1]}" if p.size else "any size"
    click.echo(f"input      {m.input}  {m.layout}  {size}" + ("" if m.fixed_size else "  (height and width dynamic)"))
    if m.head is None:
        click.echo(f"output     {m.output}  {m.num_classes} classes ({m.score_why})" + (
            "" if m.output == m.score else f"  ({m.activation}; explaining its input {m.score})"))
    else:
        click.echo(f"target     {m.score_why}: {m.num_classes} scores; default: each image's top score")
    if len(m.proto.graph.output) > 1 or m.head is not None:
        click.echo("outputs    (choose another with --output NAME, or a target with -t)")
        for name, shape, guess in targets.guesses(m):
            click.echo(f"  {name}{list(shape)}  {guess}")
    click.echo(f"labels     {'%d names' % len(m.labels) if m.labels else 'none'}")
    for name, note in m.normalised:  # what the load passes did
        click.echo(f"{name:<10} {note}")
    click.echo(f"preprocess resize {p.resize or 'direct'} -> {size} {p.interpolation}, "
               f"scale {p.scale:.6g}, mean {list(p.mean)}, std {list(p.std)}, {p.channel_order}")
    if p.size is None:
        click.echo("CAM layers: give the input size (--size H W) to list them")
    else:
        if m.shapes_note:
            click.echo(f"shapes     {m.shapes_note}")
        default = cam_layer(m, None)
        click.echo("CAM layers (block ends; * = default):")
        for name in dict.fromkeys(candidate_layers(m) + [default]):
            click.echo(f"  {'*' if name == default else ' '} {name}")
    if m.quantisers:
        click.echo(f"quantised  {m.quantisers} quantisers: " + (
            "gradients pass straight through each within its range (straight-through estimator; --quantized exact "
            "refuses)" if m.straight_through else "exact gradients (zero through each quantiser)"))
    missing = unsupported_ops(m.proto, m.input, m.score, m.straight_through)
    if missing:
        click.echo("ops between input and score without a gradient rule (white-box methods fail; black-box methods "
                   "work):")
        for op, nodes in missing.items():
            click.echo(f"    {op}: {len(nodes)} node(s), e.g. '{nodes[0]}'")
    else:
        click.echo("gradient rules: every op between input and score has one")


@cli.command()
def methods():
    """List the explanation methods, grouped by what they use."""
    width = max(len(name) for name in method_registry.METHODS)
    for group, title in method_registry.GROUPS.items():
        members = [c for c in method_registry.METHODS.values() if c.group == group]
        if members:
            click.echo(f"{title}:")
            for c in members:
                click.echo(f"  {c.name:<{width}}  {c.summary}{'' if c.one_graph else '  (several passes)'}"
                           f"{'' if c.targets == 'any' else f'  [{method_registry.TARGET_KINDS[c.targets]}]'}")
    click.echo(f"\nEvery method not marked explains {method_registry.TARGET_KINDS['any']} (-t; see `onnxplain "
               f"explain --help`).")


@cli.command()
@MODEL
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("-m", "--method", "methods", multiple=True, default=("gradcam",), show_default=True,
              help="See `onnxplain methods`; repeatable (each writes its files; --grid shows them side by side).")
@click.option("-t", "--target", multiple=True, metavar="CLASS[,CLASS...]|TARGET",
              help="Class to explain: once for all images or once per image (default: each image's top-1); "
                   "several comma-separated classes explain each of them (one batched pass, one file per class). "
                   "Or a target: box:K (K-th detection), [class:C@]box:x1,y1,x2,y2 (best overlap), class:C@box "
                   "(top box of class C), region:C[@mask.png], output:NAME[:i,j,...].")
@click.option("--layer", default=None, help="Tensor for CAM methods (default: last spatial tensor).")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("out"),
              show_default=True)
@click.option("--force", is_flag=True, help="Overwrite existing output files.")
@click.option("-k", "--top-k", type=click.IntRange(0), default=3, show_default=True, help="Classes to print per image.")
@click.option("--view", type=click.Choice(VIEWS), default="original", show_default=True,
              help="Overlay on the whole photo (the area outside the model's crop dimmed) or on the crop it saw.")
@click.option("--colour-scale", "--color-scale", "colour_scale", default=None,
              metavar="minmax|percentile[:P]|symmetric[:P]",
              help="Colours from the map's min to max, its (100-P)th to Pth percentile (default P 98), or ±the Pth "
                   "percentile of |map| (default P 100) with 0 white. Default: symmetric for signed maps, else "
                   "min-max (percentile for gradient methods).")
@click.option("--grid", is_flag=True, help="Also write IMAGE.grid.png per image: the photo, then every method's and "
                                           "class's overlay side by side.")
@BATCH
@DEVICE
@PREPROCESSING
@OUTPUT
@QUANTIZED
@PROBS
@PARAM
def explain(model, images, methods, target, layer, out_dir, force, top_k, view, colour_scale, grid, batch_size,
            device, probabilities, params, **pre):
    """Explain MODEL on IMAGES: writes an overlay PNG (title, colorbar, metadata) and the raw map (.npy) per image,
    method (and class) to OUT. -p KEY=VALUE goes to every method that has that parameter."""
    if colour_scale is not None:
        colour_scale_of(np.zeros(1), colour_scale)  # a bad scale fails before any work
    methods = tuple(dict.fromkeys(methods))
    per_method = _per_method(methods, _params(params))
    classes = _classes(target, len(images))  # per image: a list of classes, or None for its top-1
    several = any(c is not None and len(c) > 1 for c in classes)
    outputs = [{method: file_names(out_dir, p.stem, method, cs if several else None) for method in methods}
               for p, cs in zip(images, classes)]
    grids = [out_dir / f"{p.stem}.grid.png" for p in images] if grid else []
    files = [f for per_image in outputs for per_method_ in per_image.values() for per_class in per_method_
             for pair in per_class for f in pair] + grids
    if len(set(files)) != len(files):
        raise OnnxplainError("two outputs share a file name (images with the same name, or a class given twice); "
                             "explain them into different --out folders")
    check_writable(files, force)
    m = _load(model, pre, device, probabilities, batch_size)
    tgt = None if classes[0] is None else [c if several else c[0] for c in classes]
    chosen = [method_registry.get(method, **_with_progress(method, per_method[method])) for method in methods]
    explained = onnxplain.explain_images(m, images, chosen, target=tgt, layer=layer)

    def write(first, found):
        for j in range(len(found[0].maps)):
            i = first + j
            for n, e in enumerate(found):
                for k, per_class in enumerate(outputs[i][e.method]):
                    save(e, j, k, per_class, view, colour_scale)
                    _report(m, images[i], e, j, k if several else None, top_k if k == n == 0 else 0,
                            per_class[0][0])
            if grid:
                save_png(grids[i], *grid_of(found, j, view, colour_scale))
                click.echo(f"{images[i]}: grid -> {grids[i]}")

    # a batch's files are written on another thread while the next batch runs; one batch at most waits its turn
    with click.progressbar(explained, length=-(-len(images) // batch_size), label="explaining", file=sys.stderr,
                           hidden=len(images) <= batch_size) as bar, ThreadPoolExecutor(max_workers=1) as writer:
        waiting = deque()
        for n, (_, found) in enumerate(bar):
            waiting.append(writer.submit(write, n * batch_size, found))
            if len(waiting) > 1:
                waiting.popleft().result()
        for done in waiting:
            done.result()


def _per_method(methods, params: dict) -> dict[str, dict]:
    """Each method's share of the -p parameters (those it takes); a parameter no method takes is refused."""
    per_method = {}
    for method in methods:
        per_method[method] = {k: v for k, v in params.items() if method_registry.get(method).accepts(k)}
        method_registry.get(method, **per_method[method])
    unused = set(params) - {k for d in per_method.values() for k in d}
    if unused:
        key = sorted(unused)[0]
        if len(methods) == 1:
            method_registry.get(methods[0], **{key: params[key]})  # its own message, naming its parameters
        raise OnnxplainError(f"no method given takes parameter '{key}'")
    return per_method


def _classes(target: tuple[str, ...], n: int) -> list[list[int] | None]:
    """-t values as a class list per image: one value for all images or one per image; commas give several."""
    if not target:
        return [None] * n
    if len(target) not in (1, n):
        raise OnnxplainError(f"{len(target)} targets for {n} images: give one, or one per image")
    objects = [targets.parse(t) for t in target]
    if any(o is not None for o in objects):
        if not all(objects):
            raise OnnxplainError(f"give every image a target of the same kind: {' '.join(target)}")
        return [[o] for o in objects] * (n if len(objects) == 1 else 1)
    try:
        lists = [[int(c) for c in t.split(",")] for t in target]
    except ValueError:
        raise OnnxplainError(f"target must be class indices, comma-separated for several: {' '.join(target)}") from None
    if len({len(c) for c in lists}) > 1:
        raise OnnxplainError("give every image the same number of comma-separated classes")
    return lists * n if len(lists) == 1 else lists


def _report(m, image, e, j, k, top_k, png):
    """One line per explained class (k: its index among several per image, else None), then the top-k."""
    probs = m.probabilities(e.logits[j].astype(np.float64))
    c, score = (e.targets[j], e.scores[j]) if k is None else (e.targets[j, k], e.scores[j, k])
    click.echo(f"{image}: explained {m.label(int(c))} [{int(c)}] (score {score:.3f}) -> {png}")
    items = {name: np.asarray(v[j] if k is None else v[j, k]) for name, v in e.info.items()}
    shown = {name: v for name, v in items.items() if v.size <= 8}  # numbers and short lists; images stay in e.info
    if shown:  # a method's by-products for this image and class, e.g. IG's completeness gap
        click.echo("  " + ", ".join(f"{name.replace('_', ' ')} {_value(v)}" for name, v in shown.items()))
    for rank, k in enumerate(np.argsort(-probs)[:top_k], 1):
        click.echo(f"  {rank}. {m.label(int(k)):<30} [{int(k)}]  p={probs[k]:.3f}")


def _value(v: np.ndarray) -> str:
    if v.ndim == 0:
        return f"{int(v)}" if v.dtype.kind in "iu" else f"{float(v):.4g}" if v.dtype.kind == "f" else str(v)
    return "[" + ", ".join(_value(x) for x in v) + "]"


@cli.command()
@MODEL
@click.option("-m", "--method", default="gradcam", show_default=True)
@click.option("--layer", default=None)
@click.option("-o", "--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True)
@PREPROCESSING
@OUTPUT
@QUANTIZED
@PROBS
@PARAM
def export(model, method, layer, out, force, probabilities, params, **pre):
    """Write the explanation as a standalone ONNX graph (image in; outputs, map and class out)."""
    params = _params(params)
    method_registry.get(method, **params)
    check_writable([out], force)
    m = _load(model, pre, probabilities=probabilities)
    export_graph(m, method, out, layer=layer, **params)
    click.echo(f"wrote {out}: inputs {m.input}, target (optional, int64 per image; default top-1); "
               f"outputs {', '.join(o.name for o in m.proto.graph.output)}, attributions, maps, target_used")


@cli.command()
@MODEL
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("-m", "--method", "methods", multiple=True, required=True, help="Method to evaluate, repeatable.")
@click.option("-t", "--target", type=int, multiple=True,
              help="Class to explain: once for all images or once per image (default: each image's top-1).")
@click.option("--metric", "metrics", multiple=True, type=click.Choice(["deletion", "insertion", "drop", "increase"]),
              help="Metric, repeatable (default: all).")
@click.option("--step", type=click.IntRange(1), default=None,
              help="Pixels per deletion/insertion step (default H*W/224).")
@click.option("--deletion-baseline", type=click.Choice(["zero", "blur", "mean"]), default="zero", show_default=True)
@click.option("--insertion-baseline", type=click.Choice(["zero", "blur", "mean"]), default="blur", show_default=True)
@BATCH
@DEVICE
@PREPROCESSING
@OUTPUT
@QUANTIZED
@PROBS
@PARAM
def evaluate(model, images, methods, target, metrics, step, deletion_baseline, insertion_baseline, batch_size, device,
             probabilities, params, **pre):
    """Score methods' maps on IMAGES: deletion/insertion AUC (Petsiuk 2018), average drop/increase in confidence
    (Chattopadhay 2018); one table per method. -p KEY=VALUE goes to every method that has that parameter."""
    from onnxplain.metrics import BETTER, METRICS
    per_method = _per_method(methods, _params(params))
    if target and len(target) not in (1, len(images)):
        raise OnnxplainError(f"{len(target)} targets for {len(images)} images: give one, or one per image")
    metrics = list(metrics) or list(METRICS)
    m = _load(model, pre, device, probabilities, batch_size)
    bar = _Progress("evaluating")
    try:
        results = onnxplain.evaluate(m, list(images), methods, list(target) or None, metrics=metrics, step=step,
                                     deletion_baseline=deletion_baseline, insertion_baseline=insertion_baseline,
                                     batch_size=batch_size, params=per_method, progress=bar)
    finally:
        bar.close()
    width = max(12, *(len(p.name) for p in images))
    for method, row in results.items():
        click.echo(f"\n{method}")
        click.echo(f"  {'image':<{width}}" + "".join(f"{name + (' %' if name in ('drop', 'increase') else ''):>13}"
                                                   for name in metrics))
        for i, image in enumerate(images):
            click.echo(f"  {image.name:<{width}}" + "".join(f"{row[name][i]:>13.4f}" for name in metrics))
        click.echo(f"  {'mean':<{width}}" + "".join(f"{row[name].mean():>13.4f}" for name in metrics))
        click.echo(f"  {'better':<{width}}" + "".join(f"{BETTER[name]:>13}" for name in metrics))


def _warn(message, category, filename, lineno, file=None, line=None):
    click.echo(f"warning: {str(message).removeprefix('onnxplain: ')}", err=True)


def main(argv=None):
    warnings.showwarning = _warn
    try:
        cli.main(args=argv, prog_name="onnxplain", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except OnnxplainError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except Exception as exc:  # a bug of ours: still one line, the traceback on request
        if os.environ.get("ONNXPLAIN_DEBUG"):
            raise
        click.echo(f"error: internal error {type(exc).__name__}: {exc} (set ONNXPLAIN_DEBUG=1 for the traceback)",
                   err=True)
        sys.exit(1)
