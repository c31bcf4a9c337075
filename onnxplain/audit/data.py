"""An audit's data: a folder of images, a folder of class sub-folders, or a CSV listing images with their labels and
ground truth (boxes or mask images) → one `Record` per image, and the ground-truth mask of a record at the model's
input size."""
from __future__ import annotations

import csv
import difflib
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import OnnxplainError
from ..files import image_extensions
from ..preprocess import Photo, Preprocessing, open_image, prepare

KINDS = ("folder", "classes", "csv")
COLUMNS = ("path", "label", "x1", "y1", "x2", "y2", "mask")
# a CSV without a header row: its columns by their count
POSITIONAL = {2: ("path", "label"), 3: ("path", "label", "mask"), 6: ("path", "label", "x1", "y1", "x2", "y2"),
              7: COLUMNS}


@dataclass(frozen=True)
class Record:
    """One image of the data. id: its path below the data's folder, '/' written '__' (unique, stable); path: that
    path as shown; file: the file read; label: its class number (None: unlabelled); boxes: (x1, y1, x2, y2) in the
    image's own pixels; mask: a mask image's file (non-zero on the object), or None."""
    id: str
    path: str
    file: str
    label: int | None = None
    label_name: str | None = None
    boxes: tuple[tuple[float, float, float, float], ...] = ()
    mask: str | None = None

    @property
    def has_truth(self) -> bool:
        return bool(self.boxes) or self.mask is not None


@dataclass(frozen=True)
class Data:
    source: str
    kind: str
    records: list[Record]


def read_data(model, data) -> Data:
    """The records of DATA: a CSV file (`path,label[,x1,y1,x2,y2][,mask]`, with or without that header; paths relative
    to its folder, never outside it; rows naming one image twice add their boxes), a folder holding images (unlabelled),
    or a folder of class sub-folders (labelled by their names, matched to the model's labels: case and underscores
    ignored, or class numbers). Refused in one line: a bad row, a missing file, a name the model has no class for."""
    path = Path(data)
    found = _records(model, path)
    ids: dict[str, str] = {}
    for r in found.records:
        if r.id.casefold() in ids:  # casefold: folders of macOS and Windows ignore case
            raise OnnxplainError(f"{r.path} and {ids[r.id.casefold()]} would share the id {r.id} (its path with '/' "
                                 f"written '__'); rename one")
        ids[r.id.casefold()] = r.path
    return found


def _records(model, path: Path) -> Data:
    if path.is_file() and path.suffix.lower() == ".csv":
        return Data(str(path), "csv", _csv(model, path))
    if not path.is_dir():
        raise OnnxplainError(f"data not found: {path} (give a folder of images, a folder of class folders, or a CSV "
                             f"file)" if not path.exists() else f"data {path} is neither a folder nor a .csv file")
    extensions = image_extensions()
    entries = sorted(path.iterdir())
    images = [p for p in entries if p.is_file() and p.suffix.lower() in extensions]
    if images:
        return Data(str(path), "folder", [Record(p.name, p.name, str(p.absolute())) for p in images])
    folders = [p for p in entries if p.is_dir()]
    found = {f: sorted(p for p in f.iterdir() if p.is_file() and p.suffix.lower() in extensions) for f in folders}
    found = {f: files for f, files in found.items() if files}
    if not found:
        raise OnnxplainError(f"data folder {path} holds no images, neither directly nor in class folders")
    classes = _classes(model, [f.name for f in found], "class folder")
    return Data(str(path), "classes", [Record(f"{f.name}__{p.name}", f"{f.name}/{p.name}", str(p.absolute()),
                                              classes[f.name],
                                              _name(model, classes[f.name], f.name))
                                       for f, files in found.items() for p in files])


def _key(name: str) -> str:
    """A class name as folders and CSV labels are matched to the model's: case, underscores and spacing ignored."""
    return " ".join(name.replace("_", " ").casefold().split())


def _name(model, c: int, given: str) -> str:
    return model.labels[c] if model.labels else given


def _classes(model, names: list[str], what: str) -> dict[str, int]:
    """Each name's class number: the model's label it names (see `_key`), else the class number it is. Names that
    match nothing, or several classes, are refused in one line."""
    labels = model.labels or []
    index: dict[str, list[int]] = {}
    for c, label in enumerate(labels):
        index.setdefault(_key(label), []).append(c)
    out, unknown = {}, []
    for name in dict.fromkeys(names):
        hits = index.get(_key(name), [])
        if len(hits) > 1:
            raise OnnxplainError(f"{what} '{name}' names classes {', '.join(map(str, hits))} of the model; use the "
                                 f"class number instead")
        if hits:
            out[name] = hits[0]
        elif name.strip().isdigit() and int(name) < model.num_classes:
            out[name] = int(name)
        else:
            unknown.append(name)
    if unknown:
        if not labels:
            raise OnnxplainError(f"{what} '{unknown[0]}' is no class number of the model (0..{model.num_classes - 1}), "
                                 f"and the model has no class names (give --labels FILE)")
        close = difflib.get_close_matches(_key(unknown[0]), list(index), n=1, cutoff=0.6)
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        hint = f" (did you mean '{labels[index[close[0]][0]]}'?)" if close else ""
        raise OnnxplainError(f"{what} '{unknown[0]}'{more} names no class of the model{hint}; give the model's "
                             f"labels (case and underscores aside) or class numbers")
    return out


def _csv(model, path: Path) -> list[Record]:
    folder = path.resolve().parent
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [(n, row) for n, row in enumerate(csv.reader(f), 1) if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise OnnxplainError(f"cannot read {path}: {exc}") from None
    header = [c.strip().casefold() for c in rows[0][1]] if rows else []
    if header and header[0] == "path":
        unknown = [c for c in header if c not in COLUMNS]
        if unknown or len(set(header)) != len(header):
            raise OnnxplainError(f"{path} line {rows[0][0]}: columns must be some of {','.join(COLUMNS)}, each "
                                 f"once, not {','.join(rows[0][1])}")
        if 0 < len({"x1", "y1", "x2", "y2"} & set(header)) < 4:
            raise OnnxplainError(f"{path} line {rows[0][0]}: a box needs all four columns x1,y1,x2,y2")
        columns, rows = header, rows[1:]
    else:
        columns = None
    if not rows:
        raise OnnxplainError(f"{path} lists no images")
    merged: dict[str, dict] = {}
    for n, row in rows:
        where = f"{path} line {n}"
        names = columns or POSITIONAL.get(len(row))
        if names is None or len(row) != len(names):
            raise OnnxplainError(f"{where}: {len(row)} fields; a row is path,label[,x1,y1,x2,y2][,mask]"
                                 + (f" ({len(names)} fields, as the header says)" if columns else ""))
        cells = {k: v.strip() for k, v in zip(names, row)}
        file = _inside(folder, cells["path"], where)
        box = _box(cells, where)
        mask = _inside(folder, cells["mask"], where) if cells.get("mask") else None
        label = cells.get("label") or None
        entry = merged.setdefault(str(file), {"path": cells["path"], "label": label, "boxes": [], "mask": mask,
                                             "where": where})
        if (entry["label"], entry["mask"]) != (label, mask):
            raise OnnxplainError(f"{where}: {cells['path']} was given another label or mask on {entry['where']}")
        if box is not None:
            entry["boxes"].append(box)
    classes = _classes(model, [e["label"] for e in merged.values() if e["label"] is not None], f"{path}: label")
    records = []
    for file, e in merged.items():
        c = None if e["label"] is None else classes[e["label"]]
        rel = Path(file).relative_to(folder).as_posix()
        records.append(Record(rel.replace("/", "__"), rel, file, c, None if c is None else _name(model, c, e["label"]),
                              tuple(e["boxes"]), None if e["mask"] is None else str(e["mask"])))
    return records


def _inside(folder: Path, name: str, where: str) -> Path:
    """The file `name` (relative to the CSV's folder) names, refused when it is missing or lies outside that folder
    (through '..', an absolute path or a link)."""
    if not name:
        raise OnnxplainError(f"{where}: the path is empty")
    file = (folder / name).resolve()
    if not file.is_relative_to(folder):
        raise OnnxplainError(f"{where}: {name} lies outside the CSV's folder {folder}; the CSV may only name files in "
                             f"its folder")
    if not file.is_file():
        raise OnnxplainError(f"{where}: file not found: {name}")
    return file


def _box(cells: dict, where: str) -> tuple[float, float, float, float] | None:
    values = [cells.get(k, "") for k in ("x1", "y1", "x2", "y2")]
    if not any(values):
        return None
    try:
        box = tuple(float(v) for v in values)
    except ValueError:
        raise OnnxplainError(f"{where}: a box is four numbers x1,y1,x2,y2, not {','.join(values)}") from None
    if not all(map(math.isfinite, box)) or box[0] >= box[2] or box[1] >= box[3]:
        raise OnnxplainError(f"{where}: box {','.join(values)} must have x1 < x2 and y1 < y2 (pixels of the image)")
    return box


def ground_truth(record: Record, photo: Photo, p: Preprocessing) -> np.ndarray | None:
    """The record's object mask (bool H×W at the model's input size) or None without boxes and mask image: drawn at
    the image's own size (a box holds the pixels whose centres lie within it; a mask image's non-zero pixels), then
    resized and cropped as the image was (the same resize, interpolation and crop), a pixel kept where at least half
    of it is object."""
    if not record.has_truth:
        return None
    h, w = photo.geometry.original
    truth = np.zeros((h, w), bool)
    for x1, y1, x2, y2 in record.boxes:
        cols, rows = np.arange(w) + 0.5, np.arange(h) + 0.5
        truth |= ((rows >= y1) & (rows <= y2))[:, None] & ((cols >= x1) & (cols <= x2))[None, :]
    if record.mask is not None:
        mask = np.asarray(open_image(record.mask, replace(p, channels=1)))
        if mask.shape != (h, w):
            raise OnnxplainError(f"mask {Path(record.mask).name} is {mask.shape[1]}×{mask.shape[0]} pixels, its image "
                                 f"{w}×{h}")
        truth |= mask != 0
    grey = replace(p, channels=1, mean=(0.0,), std=(1.0,), scale=1.0, channel_order="RGB")
    return prepare(truth.astype(np.uint8) * 255, grey).view[..., 0] >= 128
