"""The audit report: `write_report(DIR)` turns an audit's `results.json` and the overlays it names into one
self-contained `report.html` that a reviewer reads without running anything.

Everything is inline: the pictures as data: URIs, the style sheet, the similarity curves as SVG; the page has no
script and its content security policy forbids loading anything, so it opens offline and nothing in it can reach
the network. Every text taken from the files (labels, paths, reasons, the command) is escaped. Every number shown
carries the place in results.json it came from (`data-path`, a JSON list of keys) and its exact value
(`data-value`), so a reader or a test can check the page against the file. The page stays bounded whatever the data
set's size: galleries, the grid, the class table and the list of failed images are capped, and nothing is per
image except those.
"""
from __future__ import annotations

import base64
import json
import math
from datetime import datetime, timezone
from html import escape
from pathlib import Path

from .errors import OnnxplainError, writing

NAME = "report.html"
GALLERY = 6        # images per gallery row (best, worst) and method
GRID = 12          # images in the method × image grid
CLASSES = 40       # classes in the per-class tables (those with most images)
FAILED = 50        # failed images listed
PNG = b"\x89PNG\r\n\x1a\n"
# Okabe-Ito, safe for the common colour-vision deficiencies; verdicts also carry a word and a symbol.
BLUE, ORANGE = "#0072B2", "#E69F00"


def write_report(out_dir) -> Path:
    """Write `out_dir/report.html` from `out_dir/results.json` and the PNGs it names (paths relative to `out_dir`;
    a picture that is missing, is no PNG or lies outside `out_dir` is shown as missing). Returns the report's path."""
    out_dir = Path(out_dir)
    results = _read(out_dir / "results.json")
    page = _Page(out_dir, results).html()
    path = out_dir / NAME
    with writing(path, "report ") as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path


def _read(path: Path) -> dict:
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OnnxplainError(f"{path} not found: run an audit into that folder first") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise OnnxplainError(f"cannot read {path}: {' '.join(str(exc).split())}") from None
    if not isinstance(results, dict) or not isinstance(results.get("methods"), dict):
        raise OnnxplainError(f"{path} is not an onnxplain audit's results (no 'methods' object)")
    return results


def fmt(value) -> str:
    """A number as the report shows it: whole numbers as they are, others to 3 significant digits; null as a dash."""
    if value is None or isinstance(value, float) and not math.isfinite(value):
        return "–"
    if isinstance(value, (bool, int, str)):
        return str(value)
    return f"{value:.3g}"


def _num(value, *path) -> str:
    """A number from results.json at `path`, with that path and its exact value as data attributes."""
    return (f'<span class="num" data-path="{escape(json.dumps(path))}" data-value="{escape(json.dumps(value))}">'
            f"{escape(fmt(value))}</span>")


def _dig(results: dict, *keys, default=None):
    for key in keys:
        if not isinstance(results, dict) or key not in results:
            return default
        results = results[key]
    return results


def _list(value) -> list:
    return value if isinstance(value, list) else []


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


class _Page:
    def __init__(self, folder: Path, results: dict):
        self.folder, self.root, self.r = folder, folder.resolve(), results
        self.methods = _dict(results.get("methods"))
        self.ok = [m for m, v in self.methods.items() if _dict(v).get("status") == "ok"]
        self.metrics = _dict(results.get("metrics"))
        self.images = _dict(results.get("images"))

    # ---- the page -------------------------------------------------------------------------------------------------
    def html(self) -> str:
        model = _dict(self.r.get("model"))
        name = Path(str(model.get("path") or "model")).name
        sections = [("model", "Model", self.model_card()), ("data", "Data set", self.data()),
                    ("methods", "Methods ranked", self.ranking()), ("sanity", "Sanity checks", self.sanity()),
                    ("classes", "Per class", self.per_class()), ("galleries", "Galleries", self.galleries()),
                    ("grid", "Method × image grid", self.grid()), ("failures", "Failures", self.failures())]
        nav = "".join(f'<li><a href="#{key}">{title}</a></li>' for key, title, _ in sections)
        body = "".join(f'<section id="{key}"><h2>{title}</h2>{content}</section>' for key, title, content in sections)
        return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
                f'<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
                f'style-src \'unsafe-inline\'">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"<title>onnxplain audit: {escape(name)}</title><style>{CSS}</style></head><body>"
                f'<header><h1>Explanation audit of <code>{escape(name)}</code></h1>'
                f'<p class="lead">{len(self.ok)} of {len(self.methods)} methods ran on '
                f'{_num(_dig(self.r, "data", "images"), "data", "images")} images; '
                f"made {escape(self.created())}.</p>{self.warnings()}"
                f'<nav aria-label="Sections"><ul>{nav}</ul></nav></header><main>{body}</main>'
                f"{self.footer()}</body></html>\n")

    def warnings(self) -> str:
        """What makes the whole audit doubtful (results.json's "warnings"), above everything else."""
        return "".join(f'<p class="alert" role="alert"><span class="badge warn">⚠ warning</span> {escape(str(w))}</p>'
                       for w in _list(self.r.get("warnings")))

    def footer(self) -> str:
        return (f'<footer><p>Made by onnxplain {escape(str(self.r.get("onnxplain", "unknown")))} on '
                f'{escape(self.created())}, with:</p>'
                f'<pre><code>{escape(str(self.r.get("command") or "a call from Python"))}</code></pre></footer>')

    def created(self) -> str:
        """When the audit was made, to the minute in UTC (as written where it is no ISO-8601 time)."""
        text = str(self.r.get("created") or "")
        try:
            return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc).strftime(
                "%Y-%m-%d %H:%M UTC")
        except ValueError:
            return text

    # ---- model and data -------------------------------------------------------------------------------------------
    def model_card(self) -> str:
        m = _dict(self.r.get("model"))
        inp, pre = _dict(m.get("input")), _dict(m.get("preprocessing"))
        shape = "×".join(str(d) for d in _list(inp.get("shape"))) or "–"
        size = "×".join(str(d) for d in _list(inp.get("size"))) or "–"
        steps = ", ".join(f"{escape(str(k))} {escape(json.dumps(v))}" for k, v in pre.items() if k != "guessed")
        guessed = ('<span class="badge warn">⚠ guessed: nothing in the model said it</span>' if pre.get("guessed")
                   else '<span class="badge">given by the model</span>')
        passes = _list(m.get("passes"))
        rows = [("File", f'<code>{escape(str(m.get("path", "")))}</code>'),
                ("SHA-256", f'<code class="hash">{escape(str(m.get("sha256", "")))}</code>'),
                ("Producer", escape(" ".join(str(m.get(k) or "") for k in ("producer", "producer_version")).strip()
                                    or "–")),
                ("Opset", _num(m.get("opset"), "model", "opset")),
                ("IR version", _num(m.get("ir_version"), "model", "ir_version")),
                ("Input", f'<code>{escape(str(inp.get("name", "")))}</code> {escape(shape)}, '
                          f'{escape(str(inp.get("layout", "")))}, explained at {escape(size)}'),
                ("Preprocessing", f"{steps or '–'} {guessed}"),
                ("Provider", escape(str(m.get("provider", "–")))),
                ("Classes", f'{_num(m.get("classes"), "model", "classes")}'
                            f'{", with labels" if m.get("labels") else ", no labels"}'),
                ("Normalised at load", "<ul>" + "".join(f"<li>{escape(str(p))}</li>" for p in passes) + "</ul>"
                 if passes else "nothing to normalise")]
        return _facts(rows, "The model")

    def data(self) -> str:
        d = _dict(self.r.get("data"))
        acc = self.r.get("accuracy")
        accuracy = (f'{_num(acc.get("top1"), "accuracy", "top1")} top-1 on '
                    f'{_num(acc.get("n"), "accuracy", "n")} labelled images' if isinstance(acc, dict)
                    else "not measured (no labels)")
        classes = _dict(d.get("classes"))
        biggest = sorted(classes, key=lambda c: -(classes[c] or 0))[:10]
        listed = ", ".join(f'{escape(str(c))} ({_num(classes[c], "data", "classes", c)})' for c in biggest)
        more = f" and {len(classes) - len(biggest)} more" if len(classes) > len(biggest) else ""
        rows = [("Source", f'<code>{escape(str(d.get("source", "")))}</code> ({escape(str(d.get("kind", "")))})'),
                ("Images", _num(d.get("images"), "data", "images")),
                ("Labelled", _num(d.get("labelled"), "data", "labelled")),
                ("With boxes or masks", _num(d.get("with_masks"), "data", "with_masks")),
                ("Classes", f"{len(classes)}" + (f": {listed}{more}" if classes else "")),
                ("Could not be read", f'{len(_list(d.get("failed")))} (listed under Failures)'),
                ("Explained class", "the label (the top-1 prediction where an image has none)"
                 if self.r.get("target") == "label" else "the top-1 prediction"),
                ("Model accuracy", accuracy)]
        return _facts(rows, "The data set")

    # ---- methods --------------------------------------------------------------------------------------------------
    def ranking(self) -> str:
        if not self.ok or not self.metrics:
            return '<p class="empty">No method produced metrics.</p>'
        head = "".join(f'<th scope="col" title="{escape(json.dumps(_dig(self.methods, m, "params")))}">{escape(m)}'
                       f'<span class="time">{_num(_dig(self.methods, m, "seconds"), "methods", m, "seconds")} s'
                       "</span></th>" for m in self.ok)
        groups: dict[str, list[str]] = {}
        for name, info in self.metrics.items():
            groups.setdefault(str(_dict(info).get("group", "other")), []).append(name)
        rows = []
        for group, names in groups.items():
            rows.append(f'<tr class="group"><th scope="rowgroup" colspan="{len(self.ok) + 3}">{escape(group)}</th>'
                        "</tr>")
            for name in names:
                info = _dict(self.metrics[name])
                better = info.get("better")
                order = [m for m in _list(_dig(self.r, "ranking", name)) if m in self.ok]
                cells = "".join(self.cell(m, name, order[:1] == [m]) for m in self.ok)
                arrow = ('<span class="dir" title="higher is better">↑ higher</span>' if better == "higher" else
                         '<span class="dir" title="lower is better">↓ lower</span>' if better == "lower" else "–")
                rows.append(f'<tr><th scope="row"><span class="metric">{escape(name)}</span>'
                            f'<span class="paper">{escape(str(info.get("paper", "")))}</span></th>'
                            f'<td class="dir-cell">{arrow}</td>{cells}'
                            f'<td class="order">{" › ".join(escape(m) for m in order) or "–"}</td></tr>')
        return ('<p>Means over the images with 95 % bootstrap intervals. <span class="best-key">★ Highlighted'
                '</span>: the best method on each metric.</p>'
                '<div class="scroll"><table class="ranking"><caption>Every metric, every method</caption>'
                f'<thead><tr><th scope="col">Metric</th><th scope="col">Better</th>{head}'
                f'<th scope="col">Ranking, best first</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div>')

    def cell(self, method: str, metric: str, best: bool) -> str:
        s = _dig(self.r, "summary", method, metric)
        if not isinstance(s, dict):
            return '<td class="na">–</td>'
        at = ("summary", method, metric)
        mark = '<span class="star" aria-label="best">★</span> ' if best else ""
        return (f'<td class="{"best" if best else ""}">{mark}{_num(s.get("mean"), *at, "mean")}'
                f'<span class="ci">[{_num(s.get("low"), *at, "low")}, {_num(s.get("high"), *at, "high")}]'
                f' n {_num(s.get("n"), *at, "n")}</span></td>')

    def sanity(self) -> str:
        rows = []
        for method, checks in _dict(self.r.get("sanity")).items():
            for check, v in _dict(checks).items():
                v = _dict(v)
                passed = v.get("verdict") == "pass"
                badge = ('<span class="badge pass">✓ pass</span>' if passed else
                         '<span class="badge fail">✗ fail</span>' if v.get("verdict") == "fail" else "–")
                rows.append(f'<tr><th scope="row">{escape(method)}</th><td>{escape(check)}</td><td>{badge}</td>'
                            f'<td>{escape(str(v.get("reason") or ""))}</td>'
                            f'<td>{_curve(v, ("sanity", method, check))}</td></tr>')
        if not rows:
            note = str(self.r.get("sanity_note") or "no sanity check was run").rstrip(".")
            return f'<p class="empty">{escape(note[:1].upper() + note[1:])}.</p>'
        return ('<p>A method whose maps stay similar when the model\'s weights (or the explained class) are '
                'randomised does not depend on what the model learned: it fails.</p>'
                '<div class="scroll"><table><caption>Randomisation sanity checks</caption><thead><tr>'
                '<th scope="col">Method</th><th scope="col">Check</th><th scope="col">Verdict</th>'
                '<th scope="col">Why</th><th scope="col">Similarity to the unchanged map, by layer</th></tr></thead>'
                f'<tbody>{"".join(rows)}</tbody></table></div>')

    def per_class(self) -> str:
        classes = _dict(self.r.get("per_class"))
        if not classes:
            return '<p class="empty">No labels, so no per-class breakdown.</p>'
        shown = sorted(classes, key=lambda c: -(_dict(classes[c]).get("n") or 0))[:CLASSES]
        note = (f'<p class="note">The {len(shown)} classes with most images of {len(classes)}; results.json has '
                "all.</p>" if len(shown) < len(classes) else "")
        tables = []
        for method in self.ok:
            names = [n for n in self.metrics if any(n in _dict(_dict(classes[c]).get(method)) for c in shown)]
            head = "".join(f'<th scope="col">{escape(n)}</th>' for n in names)
            rows = "".join(
                f'<tr><th scope="row">{escape(c)}</th><td>{_num(_dict(classes[c]).get("n"), "per_class", c, "n")}</td>'
                f'<td>{_num(_dict(classes[c]).get("accuracy"), "per_class", c, "accuracy")}</td>'
                + "".join(f'<td>{_num(_dig(classes[c], method, n), "per_class", c, method, n)}</td>' for n in names)
                + "</tr>" for c in shown)
            tables.append(f'<details{" open" if not tables else ""}><summary>{escape(method)}</summary>'
                          f'<div class="scroll"><table><caption>Mean of each metric by class: {escape(method)}'
                          f'</caption><thead><tr><th scope="col">Class</th><th scope="col">Images</th>'
                          f'<th scope="col">Accuracy</th>{head}</tr></thead><tbody>{rows}</tbody></table></div>'
                          "</details>")
        return note + "".join(tables)

    # ---- pictures -------------------------------------------------------------------------------------------------
    def picture(self, rel, alt: str) -> str:
        """The PNG at `rel` (relative to the folder) as an inline <img>, or a placeholder saying it is missing."""
        data = self.png(rel)
        if data is None:
            return f'<div class="missing" role="img" aria-label="{escape(alt)} (missing)">picture missing</div>'
        return (f'<img src="data:image/png;base64,{base64.b64encode(data).decode()}" alt="{escape(alt)}" '
                'loading="eager">')

    def png(self, rel) -> bytes | None:
        if not isinstance(rel, str) or not rel:
            return None
        path = (self.folder / rel).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():  # nothing outside the audit's folder
            return None
        try:
            data = path.read_bytes()
        except OSError:
            return None
        return data if data.startswith(PNG) else None

    def caption(self, image_id: str) -> str:
        info = _dict(self.images.get(image_id))
        label, predicted = info.get("label_name"), info.get("predicted_name")
        truth = f"label {escape(str(label))} · " if label is not None else ""
        return (f'<figcaption><span class="id">{escape(image_id)}</span>{truth}predicted '
                f'{escape(str(predicted))} ({_num(info.get("score"), "images", image_id, "score")})</figcaption>')

    def overlay(self, image_id: str, method: str) -> str:
        """The method's overlay of the image, and under it the image's value of the gallery's metric when
        results.json has it (images.<id>.metrics.<method>.<metric>)."""
        rel = _dig(self.images, image_id, "maps", method)
        metric = _dig(self.r, "gallery", "metric")
        values = _dict(_dig(self.images, image_id, "metrics", method))
        score = ("" if metric not in values else f'<span class="value">{escape(str(metric))} '
                 f'{_num(values[metric], "images", image_id, "metrics", method, metric)}</span>')
        return self.picture(rel, f"{method} map of {image_id}") + score

    def galleries(self) -> str:
        g = _dict(self.r.get("gallery"))
        metric = g.get("metric")
        if not metric or not any(isinstance(g.get(m), dict) for m in self.ok):
            return '<p class="empty">No gallery.</p>'
        better = _dig(self.metrics, metric, "better")
        parts = [f'<p>Images ranked by <strong>{escape(str(metric))}</strong>'
                 f'{f" ({escape(better)} is better)" if better in ("higher", "lower") else ""}.</p>']
        for method in self.ok:
            rows = ""
            for side, title in (("best", "Best explained"), ("worst", "Worst explained")):
                ids = [i for i in _list(_dig(g, method, side)) if isinstance(i, str)][:GALLERY]
                figures = "".join(f'<figure>{self.overlay(i, method)}{self.caption(i)}</figure>' for i in ids)
                rows += f'<div><h4>{title}</h4><div class="strip">{figures or "<p class=empty>none</p>"}</div></div>'
            parts.append(f'<h3>{escape(method)}</h3><div class="pair">{rows}</div>')
        return "".join(parts)

    def grid(self) -> str:
        ids = [i for i in _list(self.r.get("grid")) if isinstance(i, str)][:GRID]
        if not ids or not self.ok:
            return '<p class="empty">No images to show.</p>'
        head = "".join(f'<th scope="col">{escape(m)}</th>' for m in self.ok)
        rows = "".join(
            f'<tr><th scope="row"><figure>{self.picture(_dig(self.images, i, "thumbnail"), f"image {i}")}'
            f'{self.caption(i)}</figure></th>'
            + "".join(f"<td>{self.overlay(i, m)}</td>" for m in self.ok) + "</tr>" for i in ids)
        total = len(_list(self.r.get("grid")))
        note = f'<p class="note">The first {len(ids)} of {total} images.</p>' if total > len(ids) else ""
        return (f'{note}<div class="scroll"><table class="grid"><caption>Each image explained by each method'
                f'</caption><thead><tr><th scope="col">Image</th>{head}</tr></thead><tbody>{rows}</tbody></table>'
                "</div>")

    def failures(self) -> str:
        failed = [(m, _dict(v)) for m, v in self.methods.items()
                  if _dict(v).get("status") != "ok" or _dict(v).get("reason")]  # ok with a reason: on some images
        parts = []
        if failed:
            rows = "".join(f'<tr><th scope="row">{escape(m)}</th>'
                           f'<td>{"failed" if v.get("status") != "ok" else "ran on the other images"}</td>'
                           f'<td>{escape(str(v.get("reason") or "failed"))}</td></tr>' for m, v in failed)
            parts.append('<table><caption>Methods that failed on this model</caption><thead><tr>'
                         '<th scope="col">Method</th><th scope="col">Status</th><th scope="col">Reason</th></tr>'
                         f'</thead><tbody>{rows}</tbody></table>')
        images = [_dict(f) for f in _list(_dig(self.r, "data", "failed"))]
        if images:
            rows = "".join(f'<tr><td><code>{escape(str(f.get("path", "")))}</code></td>'
                           f'<td>{escape(str(f.get("reason") or ""))}</td></tr>' for f in images[:FAILED])
            more = (f'<p class="note">The first {FAILED} of {len(images)}; results.json lists all.</p>'
                    if len(images) > FAILED else "")
            parts.append(f'{more}<table><caption>Images that could not be read</caption><thead><tr>'
                         f'<th scope="col">File</th><th scope="col">Reason</th></tr></thead><tbody>{rows}</tbody>'
                         "</table>")
        return "".join(parts) or '<p class="empty">Every method ran and every image was read.</p>'


def _facts(rows: list[tuple[str, str]], caption: str) -> str:
    body = "".join(f'<tr><th scope="row">{key}</th><td>{value}</td></tr>' for key, value in rows)
    return f'<table class="facts"><caption>{caption}</caption><tbody>{body}</tbody></table>'


def _curve(check: dict, at: tuple, width: int = 240, height: int = 96) -> str:
    """The similarity of each layer's map to the unchanged one (Spearman, SSIM) as a small inline SVG line chart,
    0 to 1 on the vertical axis (lower when a series goes below 0); a single value is shown as a number."""
    series = [(k, colour, dash, [v if isinstance(v, (int, float)) else None for v in _list(check.get(k))])
              for k, colour, dash in (("spearman", BLUE, ""), ("ssim", ORANGE, "4 3"))]
    series = [s for s in series if s[3]]
    if not series:
        return "–"
    if max(len(s[3]) for s in series) < 2:
        return " ".join(f'{k} {_num(v[0], *at, k, 0)}' for k, _, _, v in series)
    layers = [str(x) for x in _list(check.get("layers"))]
    values = [v for s in series for v in s[3] if v is not None]
    low = min(0.0, min(values, default=0.0))
    left, right, top, bottom = 28, 8, 8, 18
    n = max(len(s[3]) for s in series)

    def x(i):
        return left + (width - left - right) * i / (n - 1)

    def y(v):
        return top + (height - top - bottom) * (1 - (v - low) / (1 - low))

    parts = [f'<line class="axis" x1="{left}" y1="{y(low):.1f}" x2="{width - right}" y2="{y(low):.1f}"/>',
             f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{y(low):.1f}"/>',
             f'<text x="{left - 4}" y="{y(1) + 4:.1f}" text-anchor="end">1</text>',
             f'<text x="{left - 4}" y="{y(low) + 4:.1f}" text-anchor="end">{fmt(low)}</text>',
             f'<text x="{(left + width - right) / 2}" y="{height - 4}" text-anchor="middle">layers randomised, top '
             "first →</text>"]
    for k, colour, dash, vals in series:
        points = [(i, v) for i, v in enumerate(vals) if v is not None]
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}" points="'
                     + " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in points) + '"/>')
        for i, v in points:
            where = escape(layers[i]) if i < len(layers) else f"step {i}"
            parts.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5" fill="{colour}" '
                         f'data-path="{escape(json.dumps([*at, k, i]))}" data-value="{escape(json.dumps(v))}">'
                         f"<title>{escape(k)} after {where}: {fmt(v)}</title></circle>")
    label = "; ".join(f"{k}: " + ", ".join(fmt(v) for v in vals) for k, _, _, vals in series)
    legend = " ".join(f'<span class="key" style="border-top:2px {"dashed" if d else "solid"} {c}">{escape(k)}</span>'
                      for k, c, d, _ in series)
    return (f'<svg class="curve" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
            f'aria-label="{escape(label)}">{"".join(parts)}</svg><div class="legend">{legend}</div>')


CSS = """
:root{--ink:#1d2430;--muted:#5b6472;--line:#d8dde5;--soft:#f4f6f9;--blue:#0072B2;--orange:#E69F00;
--red:#D55E00;--best:#dceefa}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
color:var(--ink);background:#fff}
header,main,footer{max-width:1240px;margin:0 auto;padding:0 24px}
header{padding-top:28px;border-bottom:1px solid var(--line)}
h1{font-size:26px;margin:0 0 4px;font-weight:650}
h2{font-size:20px;margin:36px 0 12px;padding-bottom:6px;border-bottom:2px solid var(--blue)}
h3{font-size:17px;margin:24px 0 6px}h4{font-size:14px;margin:12px 0 6px;color:var(--muted);font-weight:600}
.lead{color:var(--muted);margin:0 0 12px}
nav ul{list-style:none;padding:0;margin:0 0 14px;display:flex;flex-wrap:wrap;gap:6px 18px}
nav a{color:var(--blue);text-decoration:none}nav a:hover{text-decoration:underline}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px}
.hash{word-break:break-all}
pre{background:var(--soft);padding:10px 12px;border-radius:6px;white-space:pre-wrap;word-break:break-all}
table{border-collapse:collapse;margin:8px 0 16px;font-variant-numeric:tabular-nums}
caption{text-align:left;font-weight:600;color:var(--muted);padding:4px 0}
th,td{border-bottom:1px solid var(--line);padding:6px 10px;text-align:left;vertical-align:top}
thead th{background:var(--soft);font-weight:600;border-bottom:2px solid var(--line)}
tbody tr:nth-child(even) td{background:#fafbfc}
.facts th{width:190px;color:var(--muted);font-weight:500}
.ranking td{text-align:right;min-width:120px}
.ranking td.dir-cell,.ranking td.order{text-align:left;min-width:0;color:var(--muted);font-size:13px}
tr.group th{background:#fff;color:var(--blue);text-transform:capitalize;padding-top:14px;border-bottom:1px solid
var(--blue)}
.metric{display:block;font-weight:600}.paper{display:block;font-size:12px;color:var(--muted);font-weight:400}
.ci,.time{display:block;font-size:12px;color:var(--muted)}.time{font-weight:400}
td.best{background:var(--best)!important;font-weight:650}.star{color:var(--blue)}
.best-key{background:var(--best);padding:1px 6px;border-radius:4px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:13px;background:var(--soft);
border:1px solid var(--line)}
.badge.pass{background:#e3f1fa;border-color:var(--blue);color:#004f7c}
.badge.fail{background:#fbe6da;border-color:var(--red);color:#8a3500}
.badge.warn{background:#fdf1d6;border-color:var(--orange);color:#7a5200}
.alert{background:#fdf1d6;border-left:4px solid var(--orange);padding:8px 12px;margin:0 0 12px}
.scroll{overflow-x:auto}
.strip{display:flex;flex-wrap:wrap;gap:12px}.pair{display:flex;flex-wrap:wrap;gap:0 48px}.strip figure{max-width:200px}.strip img{max-width:200px}
figure{margin:0;max-width:260px}figure img,td img{display:block;max-width:256px;height:auto;border-radius:4px}
figcaption,.value{font-size:12px;color:var(--muted);margin-top:4px}.value{display:block}
.id{display:block;color:var(--ink);word-break:break-all}
.grid td,.grid th{vertical-align:middle}.grid tbody th{font-weight:400}.grid img{max-width:200px}.grid figure{max-width:200px}
.missing{width:160px;height:120px;display:flex;align-items:center;justify-content:center;background:var(--soft);
color:var(--muted);font-size:12px;border:1px dashed var(--line)}
.curve text{font-size:10px;fill:var(--muted)}.curve .axis{stroke:#9aa3af;stroke-width:1}
.legend{font-size:12px;color:var(--muted)}.key{padding-top:1px;margin-right:10px}
details{margin:6px 0}summary{cursor:pointer;font-weight:600}
.empty,.note{color:var(--muted)}
footer{margin-top:40px;padding:16px 24px 32px;border-top:1px solid var(--line);color:var(--muted);font-size:13px}
@media print{nav{display:none}details{display:block}}
"""
