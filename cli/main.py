"""onnxplain command line: inspect, explain, methods, export, evaluate, audit."""
from __future__ import annotations

import contextlib
import json
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

import onnxplain
from onnxplain import manifest as run_manifest
from onnxplain import methods as method_registry
from onnxplain import targets
from onnxplain.detection import DECODERS
from onnxplain.errors import NoDefaultTarget, OnnxplainError
from onnxplain.explain import as_targets, candidate_layers, cam_layer
from onnxplain.export import export as export_graph
from onnxplain.files import image_paths, output_stems, sha256
from onnxplain.labels import resolve
from onnxplain.methods import DEFAULT as DEFAULT_METHOD
from onnxplain.protos import dims
from onnxplain.preprocess import PRESETS
from onnxplain.render import VIEWS, check_writable, file_names, save, save_png
from onnxplain.render import colour_scale as colour_scale_of
from onnxplain.render import grid as grid_of
from onnxplain.rewrite.graph import opset_of, unsupported_ops

MODEL = click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
IMAGES = click.argument("images", nargs=-1, required=True)  # files, folders, glob patterns: see files.image_paths
JSON = click.option("--json", "as_json", is_flag=True,
                    help="Print one JSON document on stdout (and nothing else there) instead of text.")
DEVICE = click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True)
_PREPROCESSING = [
    click.option("--preset", type=click.Choice(sorted(PRESETS)), help="Preprocessing preset (the flags below "
                 "override it, and both override the model's sidecar JSON or metadata)."),
    click.option("--size", type=int, nargs=2, metavar="H W", help="Model input height and width."),
    click.option("--resize", type=int, help="Shorter side before a center crop (default: resize to --size)."),
    click.option("--scale", type=float, help="Multiplier from 0..255 pixel values (default 1/255)."),
    click.option("--mean", type=float, nargs=3, metavar="R G B",
                 help="Subtracted after scaling (a one-channel model: three equal values)."),
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
LABELS = click.option("--labels", "labels", type=click.Path(dir_okay=False, path_type=Path), default=None,
                      help="Class names: one per line, or JSON (a list, or an object {index: name}); default: the "
                           "sidecar's, else the model's metadata (labels, classes, names, character).")
RAY = click.option("--ray", "ray", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
                   help="Run on a Ray cluster (pip install 'onnxplain[ray]'): Ray Data reads the images, a pool of "
                        "actors (one GPU each where there are GPUs) explains them and writes the files. Alone: a new "
                        "local Ray instance; or auto, HOST:PORT, ray://HOST:10001.")
ACTORS = click.option("--actors", type=click.IntRange(1), default=None,
                      help="With --ray: actors, each holding the model (default: one per GPU of the cluster, else one).")
PARAM = click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE",
                     help="Method parameter, repeatable (e.g. -p masks=2000 -p baseline=blur); see the method's docs.")


def RUNS(command):
    """The options of the commands that run methods on images: --json, --batch-size, --device, the preprocessing
    options, --output and --decoder, --quantized, --labels, --probabilities and -p."""
    for option in reversed((JSON, BATCH, DEVICE, PREPROCESSING, OUTPUT, QUANTIZED, LABELS, PROBS, PARAM)):
        command = option(command)
    return command


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
    """Load `model` with the preprocessing options, --output, --decoder and --labels found in `pre` (the command's
    other options); say in one line on stderr when the preprocessing is a guess."""
    output, quantized, decoder = pre.pop("output", None), pre.pop("quantized", "ste"), pre.pop("decoder", None)
    labels = pre.pop("labels", None)
    m = onnxplain.load(model, preprocessing=_preprocessing(pre), device=device, probabilities=probabilities,
                       batch_size=batch_size, output=output, quantized=quantized, decoder=decoder, labels=labels)
    if m.preprocessing_guessed:
        p = m.preprocessing
        size = f"{p.size[0]}x{p.size[1]}" if p.size else "the input's size"
        _note(f"note: no preprocessing in {model.with_suffix('.json').name} or the model's metadata; guessed: "
              f"resize to {size}, pixels times {p.scale:.6g}, mean {list(p.mean)}, std {list(p.std)}, "
              f"{p.channel_order} (give --preset or --mean/--std/--scale if the model was trained otherwise)")
    return m


def _note(line: str) -> None:
    """A note or warning for stderr, held until the command's checks have passed (`_flush_notes`): a refused
    command says one line, its error."""
    click.get_current_context().meta.setdefault("notes", []).append(line)


def _flush_notes() -> None:
    for line in click.get_current_context().meta.pop("notes", []):
        click.echo(line, err=True)


class _Group(click.Group):
    """The command group, keeping the arguments it was given (for the run manifest)."""

    def parse_args(self, ctx, args):
        ctx.meta["argv"] = list(args)
        return super().parse_args(ctx, args)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="onnxplain")
def cli():
    """Explain image classifiers from their exported ONNX file."""


@cli.result_callback()
def _done(*args, **kwargs):
    _flush_notes()


@cli.command()
@MODEL
@PREPROCESSING
@OUTPUT
@QUANTIZED
@LABELS
@JSON
def inspect(model, as_json, **pre):
    """Show inputs, outputs, preprocessing, CAM layers and ops without a gradient rule."""
    try:
        m = _load(model, pre)
    except NoDefaultTarget as e:  # described all the same: what each output probably is, and what would explain it
        rows = [{"name": n, "shape": list(s), "guess": targets.guessed(s)} for n, s in e.shapes.items()]
        if as_json:
            click.echo(json.dumps({"model": str(model), "target": None, "why": str(e), "outputs": rows}))
            return
        click.echo(f"model      {model}")
        click.echo("target     none by default: choose an output with --output NAME, or a "
                   "detector layout with --decoder NAME")
        click.echo("outputs")
        for r in rows:
            click.echo(f"  {r['name']}{r['shape']}  {r['guess']}")
        return
    d = _described(m)
    if as_json:
        click.echo(json.dumps(d, ensure_ascii=False))
        return
    p = m.preprocessing
    click.echo(f"model      {model}  (opset {d['opset']}, {d['nodes']} nodes)")
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
    click.echo(f"labels     {'%d names (%s)' % (len(m.labels), m.labels_from) if m.labels else 'none'}")
    for name, note in m.normalised:  # what the load passes did
        click.echo(f"{name:<10} {note}")
    click.echo(f"preprocess resize {p.resize or 'direct'} -> {size} {p.interpolation}, "
               f"scale {p.scale:.6g}, mean {list(p.mean)}, std {list(p.std)}, {p.channel_order} "
               f"({m.preprocessing_from})")
    if p.size is None:
        click.echo("CAM layers: give the input size (--size H W) to list them")
    else:
        if m.shapes_note:
            click.echo(f"shapes     {m.shapes_note}")
        click.echo("CAM layers (block ends; * = default):")
        for name in d["cam_layers"]:
            click.echo(f"  {'*' if name == d['default_layer'] else ' '} {name}")
        if d["scale_layers"]:
            click.echo("CAM layers of the detector's scales (the default for a box at that scale, from its first "
                       "anchor):")
            for name, first in d["scale_layers"]:
                click.echo(f"    {name}  (anchors from {first})")
    if m.quantisers:
        click.echo(f"quantised  {m.quantisers} quantisers: " + (
            "gradients pass straight through each within its range (straight-through estimator; --quantized exact "
            "refuses)" if m.straight_through else "exact gradients (zero through each quantiser)"))
    if d["ops_without_rule"]:
        click.echo("ops between input and score without a gradient rule (white-box methods fail; black-box methods "
                   "work):")
        for op, nodes in d["ops_without_rule"].items():
            click.echo(f"    {op}: {len(nodes)} node(s), e.g. '{nodes[0]}'")
    else:
        click.echo("gradient rules: every op between input and score has one")


def _described(m) -> dict:
    """What `inspect` shows, as JSON data."""
    default = cam_layer(m, None) if m.preprocessing.size else None
    scales = m.scales() if default else None
    return {"model": run_manifest.model_record(m), "opset": opset_of(m.proto), "nodes": len(m.proto.graph.node),
            "layout": m.layout, "size": list(m.preprocessing.size) if m.preprocessing.size else None,
            "size_dynamic": not m.fixed_size, "score_why": m.score_why,
            "output": m.output or None, "score": m.score or None, "classes": m.num_classes,
            "head": None if m.head is None else type(m.head).__name__,
            "outputs": [{"name": o.name, "shape": [d or None for d in dims(o)]}
                        for o in (m.bare or m.proto).graph.output],
            "output_guesses": [{"name": name, "shape": list(shape), "guess": guess} for name, shape, guess in
                               targets.guesses(m)] if len(m.proto.graph.output) > 1 or m.head is not None else [],
            "labels": m.labels, "load_passes": dict(m.normalised), "shapes": m.shapes_note if default else None,
            "cam_layers": list(dict.fromkeys(candidate_layers(m) + [default])) if default else [],
            "default_layer": default, "scale_layers": [[n, int(a)] for n, a in zip(*scales)] if scales else [],
            "quantisers": m.quantisers, "straight_through": m.straight_through,
            "ops_without_rule": unsupported_ops(m.proto, m.input, m.score, m.straight_through)}


@cli.command()
@click.argument("names", nargs=-1)
@click.option("--size", type=int, nargs=2, metavar="H W", default=(224, 224), show_default=True,
              help="Input size the model passes per image are counted at.")
@JSON
def methods(names, size, as_json):
    """List the explanation methods (or the NAMES given), grouped by what they use, with their parameters and
    defaults (and what each means, for the NAMES given) and the model passes one image costs."""
    for name in names:
        method_registry.get(name)  # unknown names refused in one line
    chosen = [c for c in method_registry.METHODS.values() if not names or c.name in names]
    described = [_method(c, tuple(size)) for c in chosen]
    if as_json:
        click.echo(json.dumps(described, ensure_ascii=False))
        return
    width = max(len(d["name"]) for d in described)
    for group, title in method_registry.GROUPS.items():
        members = [d for d in described if d["group"] == group]
        if members:
            click.echo(f"{title}:")
        for d in members:
            kind = "" if d["targets"] == "any" else f"  [{method_registry.TARGET_KINDS[d['targets']]}]"
            click.echo(f"  {d['name']:<{width}}  {d['summary']}{'' if d['one_graph'] else '  (several passes)'}{kind}")
            params = (f"\n  {'':<{width}}  ".join(f"{k}={v!r}: {d['meanings'][k]}" for k, v in d["parameters"].items())
                      if names else "  ".join(f"{k}={v!r}" for k, v in d["parameters"].items()))
            passes = d["model_passes"]
            cost = (f"{passes:,} model pass{'es' if passes > 1 else ''} per image at {size[0]}x{size[1]}"
                    if passes is not None else "model passes per image: one per channel of the layer(s)")
            click.echo(f"  {'':<{width}}  {cost}" + (f"  (slow: over {SLOW:,})" if d["slow"] else ""))
            if params:
                click.echo(f"  {'':<{width}}  {params}")
    click.echo(f"\nEvery method not marked explains {method_registry.TARGET_KINDS['any']} (-t; see `onnxplain "
               f"explain --help`).")


def _method(cls, size) -> dict:
    """A method as data: name, group, summary, parameters with their defaults (from the class), passes per image."""
    from dataclasses import MISSING, fields

    from onnxplain.methods.parameters import meaning
    defaults = cls()
    passes = defaults.model_passes(size)
    parameters = {f.name: run_manifest.jsonable(getattr(defaults, f.name)) for f in fields(cls)
                  if f.init and f.name != "progress" and (f.default is not MISSING or f.default_factory is not MISSING)}
    return {"name": cls.name, "group": cls.group, "summary": cls.summary, "one_graph": cls.one_graph,
            "at_layer": cls.at_layer, "targets": cls.targets, "parameters": parameters,
            "meanings": {k: meaning(cls.name, k) for k in parameters},
            "model_passes": passes, "slow": passes is not None and passes > SLOW}


SLOW = 50_000  # model passes per image above which a method is called slow (minutes to hours per image on a CPU)


@cli.command()
@MODEL
@IMAGES
@click.option("-m", "--method", "methods", multiple=True, default=(DEFAULT_METHOD,), show_default=True,
              help="See `onnxplain methods`; repeatable (each writes its files; --grid shows them side by side).")
@click.option("-t", "--target", multiple=True, metavar="CLASS[,CLASS...]|TARGET",
              help="Class to explain, by number or name (case-insensitive, or the start of one name): once for all "
                   "images or once per image (default: each image's top-1); several comma-separated classes explain "
                   "each of them (one batched pass, one file per class). Or a target: box:K (K-th detection), "
                   "[class:C@]box:x1,y1,x2,y2 (best overlap), class:C@box (top box of class C), "
                   "region:C[@mask.png], output:NAME[:i,j,...].")
@click.option("--layer", default=None, help="Tensor for CAM methods (default: last spatial tensor).")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("out"),
              show_default=True)
@click.option("--force", is_flag=True, help="Overwrite existing output files.")
@click.option("--skip-existing", is_flag=True,
              help="Skip the images whose output files all exist (to finish an interrupted run); images with only "
                   "some of them still need --force.")
@click.option("-k", "--top-k", type=click.IntRange(0), default=3, show_default=True,
              help="Classes (a detector's: detections, as box:K numbers them) to print per image.")
@click.option("--view", type=click.Choice(VIEWS), default="original", show_default=True,
              help="Overlay on the whole photo (the area outside the model's crop dimmed) or on the crop it saw.")
@click.option("--colour-scale", "--color-scale", "colour_scale", default=None,
              metavar="minmax|percentile[:P]|symmetric[:P]",
              help="Colours from the map's min to max, its (100-P)th to Pth percentile (default P 98), or ±the Pth "
                   "percentile of |map| (default P 100) with 0 white. Default: symmetric for signed maps, else "
                   "min-max (percentile for gradient methods).")
@click.option("--grid", is_flag=True, help="Also write IMAGE.grid.png per image: the photo, then every method's and "
                                           "class's overlay side by side.")
@RUNS
@RAY
@ACTORS
def explain(model, images, methods, target, layer, out_dir, force, skip_existing, top_k, view, colour_scale, grid,
            as_json, batch_size, device, ray, actors, probabilities, params, **pre):
    """Explain MODEL on IMAGES (files, folders of images, glob patterns): writes an overlay PNG (title, colorbar,
    metadata) and the raw map (.npy) per image, method (and class) to OUT, and records the run in
    OUT/onnxplain-run.json. -p KEY=VALUE goes to every method that has that parameter."""
    if colour_scale is not None:
        colour_scale_of(np.zeros(1), colour_scale)  # a bad scale fails before any work
    methods = tuple(dict.fromkeys(methods))
    per_method = _per_method(methods, _params(params))
    images = _images(images)
    m = _load(model, pre, device, probabilities, batch_size)
    for method in methods:  # images are read at the input size: refused here when it is unknown
        passes = method_registry.get(method, **per_method[method]).model_passes(m.input_size)
        if passes is not None and passes > SLOW:
            _note(f"warning: {method} with these parameters runs {passes:,} model passes per image (hours per image "
                  f"on a CPU); `onnxplain methods {method}` shows the parameters that set the count")
    classes = _classes(m, target, len(images))  # per image: a list of classes, or None for its top-1
    several = any(c is not None and len(c) > 1 for c in classes)
    stems = output_stems(images)
    outputs = [{method: file_names(out_dir, stem, method, cs if several else None) for method in methods}
               for stem, cs in zip(stems, classes)]
    grids = [out_dir / f"{stem}.grid.png" for stem in stems] if grid else []
    files = [[f for per_class in per_image.values() for f in _files(per_class)] + grids[i:i + 1]
             for i, per_image in enumerate(outputs)]
    if len({f for fs in files for f in fs}) != sum(map(len, files)):
        raise OnnxplainError("two outputs share a file name (a class given twice); give each class once")
    runs = run_manifest.read(out_dir, force)
    record = {**run_manifest.versions(), "command": ["onnxplain", *click.get_current_context().meta["argv"]],
              "model": run_manifest.model_record(m), "device": device, "devices_used": [], "ray": ray,
              "methods": list(methods),
              "parameters": {method: run_manifest.parameters(method_registry.get(method, **per_method[method]))
                             for method in methods},
              "layer": layer, "targets": list(target) or None, "view": view, "colour_scale": colour_scale,
              "out": str(out_dir), "images": [None] * len(images)}
    todo = _to_do(images, files, runs, record, force, skip_existing)
    check_writable([f for i in todo for f in files[i]], force)
    _flush_notes()  # the checks have passed: what was guessed or skipped is said before the long part
    say = (lambda *a: None) if as_json else click.echo
    # a Ray worker's method has no progress bar here to draw
    chosen = [method_registry.get(method, **(per_method[method] if ray else _with_progress(method, per_method[method])))
              for method in methods]
    if todo:
        tgt = None if classes[todo[0]] is None else [classes[i] if several else classes[i][0] for i in todo]
        write = _BatchFiles([images[i] for i in todo], [outputs[i] for i in todo], [grids[i] for i in todo] if grid
                            else [], [_target_of(target, i) for i in todo], several, top_k, view, colour_scale,
                            Path.cwd())
        explained = onnxplain.explain_images(m, [images[i] for i in todo], chosen, target=tgt, layer=layer,
                                             engine="ray" if ray else "local", address=ray, actors=actors, then=write)
        devices = set()
        with click.progressbar(explained, length=-(-len(todo) // batch_size), label="explaining", file=sys.stderr,
                               hidden=len(todo) <= batch_size) as bar, _stdout_kept(as_json):
            for n, (_, (entries, layers, used)) in enumerate(bar):
                for j, entry in enumerate(entries):
                    record["images"][todo[n * batch_size + j]] = entry
                    _say(say, entry)
                devices.update(used)
                record.update(layers_used=layers, devices_used=sorted(devices))
                run_manifest.write(out_dir, runs + [record])  # after each batch: an interrupted run keeps its record
    elif files:
        run_manifest.write(out_dir, runs + [record])
    if as_json:
        click.echo(json.dumps(record, ensure_ascii=False))


def _stdout_kept(as_json: bool):
    """With --json, stdout holds the document only: what libraries print meanwhile (Ray's lines from its workers and
    raylet) goes to stderr."""
    return contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()


@dataclass
class _BatchFiles:
    """Writes a batch's files and makes its manifest entries, where the batch was explained (a writer thread, or
    the Ray actor); returns (the entries, the layers used, the devices used)."""
    images: list          # the images to explain, and per image:
    outputs: list         # {method: file_names}
    grids: list           # its grid file, if --grid
    targets: list         # its -t value
    several: bool         # several classes per image
    top_k: int
    view: str
    colour_scale: str | None
    root: Path            # the folder the paths are relative to (a Ray worker's own may be another)

    def __call__(self, m, first: int, found: list) -> tuple[list[dict], dict, list[str]]:
        entries = []
        for j in range(len(found[0].maps)):
            i = first + j
            listed = found[0].detections
            entry = {"image": str(self.images[i]), "target": self.targets[i], "skipped": False,
                     "top": _top(m, found[0].logits[j], self.top_k) if listed is None else
                     listed[j]["detections"][:self.top_k], "explained": []}
            if listed is not None:  # a detector's: its detections, as box:K numbers them
                entry.update(threshold=listed[j]["threshold"], overlap=listed[j]["overlap"])
            for e in found:
                for k, per_class in enumerate(self.outputs[i][e.method]):
                    save(e, j, k, [(self.root / png, self.root / npy) for png, npy in per_class], self.view,
                         self.colour_scale)
                    entry["explained"].append(_explained(m, e, j, k if self.several else None, _files([per_class])))
            if self.grids:
                save_png(self.root / self.grids[i], *grid_of(found, j, self.view, self.colour_scale))
                entry["grid"] = str(self.grids[i])
            entries.append(entry)
        return entries, {e.method: e.layer for e in found}, m.devices_used()


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


def _files(per_class: list) -> list[Path]:
    """The files of a method's outputs for an image (per class, per part: PNG and .npy), in order."""
    return [f for parts in per_class for pair in parts for f in pair]


def _images(args) -> list[Path]:
    """IMAGES as image paths (folders and glob patterns expanded), with a note per folder on stderr."""
    images, notes = image_paths(args)
    for note in notes:
        _note(f"note: {note}")
    return images


def _to_do(images, files, runs, record, force, skip_existing) -> list[int]:
    """The images to explain: all, or with --skip-existing those whose output files are not all there. A skipped
    image keeps the entries of the runs that made its files, where the manifest has them; it is refused (without
    --force; with it, recomputed) when such a run had another model, target, method parameters, layer or
    preprocessing."""
    if not skip_existing:
        return list(range(len(images)))
    made = {f: (run, entry, item) for run in runs for entry in run.get("images") or [] if isinstance(entry, dict)
            for item in entry.get("explained") or [] for f in item.get("files") or []}
    todo = []
    for i, fs in enumerate(files):
        there = [os.path.lexists(f) for f in fs]
        if any(there) and not all(there) and not force:
            raise OnnxplainError(f"{fs[there.index(True)]} exists but {fs[there.index(False)]} does not (an "
                                 f"interrupted run?); use --force with --skip-existing to recompute that image")
        known = [made[str(f)] for f in fs if str(f) in made]
        wanted = _target_of(record["targets"] or (), i)
        other = next((str(f) for f in fs if str(f) in made and (made[str(f)][1].get("target") != wanted or
                      _made_by(made[str(f)][0], made[str(f)][2].get("method")) !=
                      _made_by(record, made[str(f)][2].get("method")))), None)
        if other is not None and not force:
            raise OnnxplainError(f"{other} was made by another run (other model, target, method parameters, layer "
                                 f"or preprocessing); use --force to recompute it")
        if not all(there) or other is not None:
            todo.append(i)
            continue
        items = list({id(item): item for _, _, item in known}.values())
        record["images"][i] = {"image": str(images[i]), "target": wanted, "skipped": True,
                               "top": known[0][1].get("top", []) if known else [],
                               "explained": items or [{"files": list(map(str, fs))}]}
    return todo


def _target_of(target, i: int) -> str | None:
    """Image i's -t value as given (one for all images, or one each), None for its top-1 class."""
    return None if not target else target[0] if len(target) == 1 else target[i]


def _made_by(run: dict, method: str | None) -> tuple:
    """What a run's files of `method` depend on: the model file, its score, the preprocessing, the method's
    parameters and the layer."""
    model = run.get("model") or {}
    pre = {k: v for k, v in (model.get("preprocessing") or {}).items() if k not in ("from", "guessed")}
    params = (run.get("parameters") or {}).get(method) or {}
    return (model.get("sha256"), model.get("score"), json.dumps(pre, sort_keys=True), method,
            json.dumps({k: v for k, v in params.items() if k != "checkpoint"}, sort_keys=True), run.get("layer"))


def _classes(m, target: tuple[str, ...], n: int) -> list[list[int] | None]:
    """-t values as a class list per image: one value for all images or one per image; commas give several. A
    class is a number or a name of the model's labels (a whole -t value is taken as one name when it is one); a
    target object (box:, region:, output:, see `targets.parse`) is one per image."""
    if not target:
        return [None] * n
    if len(target) not in (1, n):
        raise OnnxplainError(f"{len(target)} targets for {n} images: give one, or one per image")
    objects = [targets.parse(t) for t in target]
    if any(o is not None for o in objects):
        if not all(objects):
            raise OnnxplainError(f"give every image a target of the same kind: {' '.join(target)}")
        return [[o] for o in objects] * (n if len(objects) == 1 else 1)
    names = {s.casefold() for s in m.labels or ()}
    lists = [[resolve(t, m.labels)] if t.strip().casefold() in names else [resolve(c, m.labels) for c in t.split(",")]
             for t in target]
    if len({len(c) for c in lists}) > 1:
        raise OnnxplainError("give every image the same number of comma-separated classes")
    lists = lists * n if len(lists) == 1 else lists
    as_targets(m, lists, n)  # classes out of range are refused here, before anything is said
    return lists


def _top(m, logits, top_k: int) -> list[dict]:
    """The top-k classes of an image: number, label and probability."""
    probs = m.probabilities(logits.astype(np.float64))
    return [{"class": int(c), "label": m.label(int(c)), "p": float(probs[c])} for c in np.argsort(-probs)[:top_k]]


def _explained(m, e, j, k, files) -> dict:
    """Image j's explained class (k: its index among several per image, else None) by method e: number, label,
    score (the differentiated one), files written and the method's short by-products."""
    c, score = (e.targets[j], e.scores[j]) if k is None else (e.targets[j, k], e.scores[j, k])
    items = {name: np.asarray(v[j] if k is None else v[j, k]) for name, v in e.info.items()}
    return {"method": e.method, "class": int(c), "label": m.label(int(c)), "score": float(score),
            "files": [str(f) for f in files],
            "by_products": {name: run_manifest.jsonable(v) for name, v in items.items() if v.size <= 8}}


def _say(say, entry: dict) -> None:
    """An image's result as text: one line per explained class and its by-products, then the top-k (a detector's:
    its top-k detections, box:K as -t takes it)."""
    for item in entry["explained"]:
        say(f"{entry['image']}: explained {item['label']} [{item['class']}] (score {item['score']:.3f}) -> "
            f"{item['files'][0]}")
        if item["by_products"]:  # numbers and short lists; images stay in e.info
            say("  " + ", ".join(f"{name.replace('_', ' ')} {_value(np.asarray(v))}"
                                 for name, v in item["by_products"].items()))
    if "threshold" in entry and not entry["top"]:
        say(f"  no detection with score ≥ {entry['threshold']:g}")
    for rank, top in enumerate(entry["top"], 1):
        if "anchor" in top:
            say(f"  {top['target']:<8} {top['label']:<22} score={top['score']:.3f}  "
                f"box {_value(np.asarray(top['box']))}")
        else:
            say(f"  {rank}. {top['label']:<30} [{top['class']}]  p={top['p']:.3f}")
    if "grid" in entry:
        say(f"{entry['image']}: grid -> {entry['grid']}")


def _value(v: np.ndarray) -> str:
    if v.ndim == 0:
        return f"{int(v)}" if v.dtype.kind in "iu" else f"{float(v):.4g}" if v.dtype.kind == "f" else str(v)
    return "[" + ", ".join(_value(x) for x in v) + "]"


@cli.command()
@MODEL
@click.option("-m", "--method", default=DEFAULT_METHOD, show_default=True)
@click.option("--layer", default=None)
@click.option("-o", "--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True)
@JSON
@PREPROCESSING
@OUTPUT
@QUANTIZED
@PROBS
@PARAM
def export(model, method, layer, out, force, as_json, probabilities, params, **pre):
    """Write the explanation as a standalone ONNX graph (image in; outputs, map and class out)."""
    params = _params(params)
    method_registry.get(method, **params)
    check_writable([out], force)
    m = _load(model, pre, probabilities=probabilities)
    export_graph(m, method, out, layer=layer, **params)
    outputs = [o.name for o in m.proto.graph.output] + ["attributions", "maps", "target_used"]
    if as_json:
        click.echo(json.dumps({"out": str(out), "sha256": sha256(out), "method": method, "layer": layer,
                               "parameters": run_manifest.parameters(method_registry.get(method, **params)),
                               "inputs": [m.input, "target"], "outputs": outputs,
                               "model": run_manifest.model_record(m)}, ensure_ascii=False))
        return
    click.echo(f"wrote {out}: inputs {m.input}, target (optional, int64 per image; default top-1); "
               f"outputs {', '.join(outputs)}")


@cli.command()
@MODEL
@IMAGES
@click.option("-m", "--method", "methods", multiple=True, required=True, help="Method to evaluate, repeatable.")
@click.option("-t", "--target", multiple=True, metavar="TARGET",
              help="Target to explain, as explain's -t (a class by number or name, box:K, class:C@box:x1,y1,x2,y2, "
                   "region:C@MASK, output:NAME:i): once for all images or once per image (default: each image's "
                   "top-1).")
@click.option("--metric", "metrics", multiple=True, type=click.Choice(["deletion", "insertion", "drop", "increase"]),
              help="Metric, repeatable (default: all).")
@click.option("--step", type=click.IntRange(1), default=None,
              help="Pixels per deletion/insertion step (default H*W/224).")
@click.option("--deletion-baseline", type=click.Choice(["zero", "blur", "mean"]), default="zero", show_default=True)
@click.option("--insertion-baseline", type=click.Choice(["zero", "blur", "mean"]), default="blur", show_default=True)
@RUNS
def evaluate(model, images, methods, target, metrics, step, deletion_baseline, insertion_baseline, as_json, batch_size,
             device, probabilities, params, **pre):
    """Score methods' maps on IMAGES: deletion/insertion AUC (Petsiuk 2018), average drop/increase in confidence
    (Chattopadhay 2018); one table per method. -p KEY=VALUE goes to every method that has that parameter."""
    from onnxplain.metrics import BETTER, METRICS
    per_method = _per_method(methods, _params(params))
    images = _images(images)
    metrics = list(metrics) or list(METRICS)
    m = _load(model, pre, device, probabilities, batch_size)
    classes = _classes(m, target, len(images))
    if any(c is not None and len(c) > 1 for c in classes):
        raise OnnxplainError("evaluate scores one target per image; give one class each (no comma lists)")
    bar = _Progress("evaluating")
    try:
        results = onnxplain.evaluate(m, list(images), methods, [c[0] for c in classes] if target else None,
                                     metrics=metrics, step=step,
                                     deletion_baseline=deletion_baseline, insertion_baseline=insertion_baseline,
                                     batch_size=batch_size, params=per_method, progress=bar)
    finally:
        bar.close()
    if as_json:
        click.echo(json.dumps({
            "model": run_manifest.model_record(m), "metrics": metrics, "better": {k: BETTER[k] for k in metrics},
            "methods": {method: {"parameters": run_manifest.parameters(method_registry.get(method,
                                                                                           **per_method[method])),
                                 "images": [{"image": str(image), **{k: float(row[k][i]) for k in metrics}}
                                            for i, image in enumerate(images)],
                                 "mean": {k: float(row[k].mean()) for k in metrics}}
                        for method, row in results.items()}}, ensure_ascii=False))
        return
    width = max(12, *(len(p.name) for p in images))
    for method, row in results.items():
        click.echo(f"\n{method}")
        click.echo(f"  {'image':<{width}}" + "".join(f"{name + (' %' if name in ('drop', 'increase') else ''):>13}"
                                                   for name in metrics))
        for i, image in enumerate(images):
            click.echo(f"  {image.name:<{width}}" + "".join(f"{row[name][i]:>13.4f}" for name in metrics))
        click.echo(f"  {'mean':<{width}}" + "".join(f"{row[name].mean():>13.4f}" for name in metrics))
        click.echo(f"  {'better':<{width}}" + "".join(f"{BETTER[name]:>13}" for name in metrics))


@cli.command()
@MODEL
@click.argument("data", type=click.Path(path_type=Path))
@click.option("-m", "--method", "methods", multiple=True, required=True, help="Method to audit, repeatable.")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder for results.json, per_image.jsonl/.csv and maps/ (refused when it holds files, unless "
                   "--resume or --force).")
@click.option("--metric", "metrics", multiple=True, metavar="NAME",
              help="Metric, repeatable (default: every registered metric the data allows; see `onnxplain.metrics."
                   "REGISTRY`).")
@click.option("-q", "--metric-option", "metric_options", multiple=True, metavar="METRIC.KEY=VALUE",
              help="A metric's option, repeatable (e.g. -q deletion.step=448).")
@click.option("--target", type=click.Choice(["label", "top1"]), default="label", show_default=True,
              help="Explain each image's label where the data gives one (else its top-1 class), or its top-1 class.")
@click.option("--resume", is_flag=True, help="Go on with the audit in OUT, skipping the images it has done.")
@click.option("--force", is_flag=True, help="Start again in OUT, replacing an audit's files there.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap intervals.")
@click.option("--sanity-images", type=click.IntRange(1), default=2, show_default=True,
              help="Images the randomisation checks (mprt, random_logit) run on for the sanity section.")
@click.option("--reexplain-passes", type=click.IntRange(1), default=20_000, show_default=True,
              help="Model passes per image a metric may spend explaining again (robustness, randomisation); past "
                   "them it is not run for that method and the rows say why.")
@RUNS
@RAY
@ACTORS
def audit(model, data, methods, out_dir, metrics, metric_options, target, resume, force, seed, sanity_images,
          reexplain_passes, as_json, batch_size, device, ray, actors, probabilities, params, **pre):
    """Audit METHODS of MODEL on DATA (a folder of images, a folder of class folders named by the model's labels,
    or a CSV path,label[,x1,y1,x2,y2][,mask]): every metric per image and method, streamed in batches and stored as
    they finish (--resume goes on after an interruption), then results.json with means, 95 % bootstrap intervals,
    rankings, per-class means and galleries. -p KEY=VALUE goes to every method that has that parameter."""
    methods = tuple(dict.fromkeys(methods))
    per_method = _per_method(methods, _params(params))
    options: dict[str, dict] = {}
    for pair in metric_options:
        name, dot, rest = pair.partition(".")
        if not dot:
            raise OnnxplainError(f"metric option '{pair}' is not METRIC.KEY=VALUE")
        options.setdefault(name, {}).update(_params([rest]))
    m = _load(model, pre, device, probabilities, batch_size)
    bar = _Progress("auditing")

    def progress(done, total):  # first called once the audit's checks have passed
        _flush_notes()
        bar(done, total)
    try:
        with _stdout_kept(as_json):
            results = onnxplain.audit(m, data, methods, out_dir, metrics=list(metrics) or None, target=target,
                                      resume=resume, force=force, engine="ray" if ray else "local", address=ray,
                                      actors=actors, params=per_method, options=options, batch_size=batch_size,
                                      seed=seed, reexplain_passes=reexplain_passes, sanity_images=sanity_images,
                                      progress=progress,
                                      command=" ".join(["onnxplain", *click.get_current_context().meta["argv"]]))
    except KeyboardInterrupt:
        bar.close()
        click.echo("interrupted; rerun with --resume", err=True)
        sys.exit(130)
    finally:
        bar.close()
    if as_json:
        click.echo(json.dumps(results, ensure_ascii=False))
        return
    _say_audit(results, out_dir)


def _say_audit(results: dict, out_dir: Path) -> None:
    """An audit's summary as text: data, accuracy, failed methods, then each metric's ranking with means and
    intervals."""
    d = results["data"]
    click.echo(f"{d['images']} images ({d['kind']}: {d['labelled']} labelled, {d['with_masks']} with ground truth, "
               f"{len(d['failed'])} unreadable)" + ("" if results["accuracy"] is None else
                                                    f"; top-1 accuracy {results['accuracy']['top1']:.3f}"))
    for method, info in results["methods"].items():
        if info["status"] != "ok" or info["reason"]:
            click.echo(f"{method}: {info['status']}: {info['reason']}")
    for metric, order in results["ranking"].items():
        better = results["metrics"][metric]["better"]
        click.echo(f"{metric} ({better} is better): " + ", ".join(
            f"{method} {s['mean']:.4g} [{s['low']:.4g}, {s['high']:.4g}]"
            for method in order for s in [results["summary"][method][metric]]))
    click.echo(f"wrote {out_dir / 'report.html'}, {out_dir / 'results.json'}, {out_dir / 'per_image.csv'}")


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
