"""Batches of files: image paths from files, folders and glob patterns, and output names that cannot collide."""
from __future__ import annotations

import glob
import hashlib
import os
from pathlib import Path

from .errors import OnnxplainError


def image_extensions() -> frozenset[str]:
    """The file extensions Pillow opens (lower case, with the dot)."""
    from PIL import Image
    Image.init()
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def image_paths(args) -> tuple[list[Path], list[str]]:
    """The images that `args` name, and one note per folder or pattern on what it held. A file is taken as it is;
    a folder gives the images directly inside it and a glob pattern the images it matches, each sorted by name,
    other entries skipped and counted in a note. An image named twice is refused."""
    images, notes, extensions = [], [], None
    for arg in map(str, args):
        path = Path(arg)
        if path.is_dir() or (not os.path.lexists(path) and glob.has_magic(arg)):
            extensions = extensions or image_extensions()
            found = sorted(path.iterdir()) if path.is_dir() else sorted(map(Path, glob.glob(arg)))
            files = [p for p in found if p.is_file()]
            chosen = [p for p in files if p.suffix.lower() in extensions]
            what = f"folder {path}" if path.is_dir() else f"pattern {arg}"
            if not chosen:
                raise OnnxplainError(f"{what} holds no image files ({len(files)} other files)" if files
                                     else f"{what} matches no files" if not path.is_dir() else f"{what} is empty")
            skipped = len(found) - len(chosen)
            if skipped:
                notes.append(f"{what}: {len(chosen)} images, {skipped} other entries skipped")
            images += chosen
        elif not path.is_file():
            raise OnnxplainError(f"image not found: {path}")
        else:
            images.append(path)
    seen: dict[Path, Path] = {}
    for p in images:
        key = p.resolve()
        if key in seen:
            raise OnnxplainError(f"image {p} is given twice" + ("" if seen[key] == p else f" (also as {seen[key]})"))
        seen[key] = p
    return images, notes


def output_stems(paths: list[Path]) -> list[str]:
    """A name per image for its output files, unique among `paths`: its stem, else (where stems collide, a.png and
    a.jpg) its file name, else (same names in different folders) its path below their common folder, joined by '__'."""
    paths = [Path(p) for p in paths]
    absolute = [p.resolve() for p in paths]
    common = Path(os.path.commonpath(absolute)) if absolute else Path()
    ways = (lambda i: paths[i].stem, lambda i: paths[i].name,
            lambda i: "__".join(absolute[i].relative_to(common).parts) if absolute[i] != common else paths[i].name)
    names = [ways[0](i) for i in range(len(paths))]
    for way in ways[1:]:
        clash = _clashing(names)
        if not clash:
            break
        names = [way(i) if i in clash else n for i, n in enumerate(names)]
    clash = _clashing(names)
    if clash:
        first = sorted(clash)[:2]
        raise OnnxplainError(f"images {paths[first[0]]} and {paths[first[1]]} would write the same output names; "
                             f"explain them into different --out folders")
    return names


def _clashing(names: list[str]) -> set[int]:
    """The indices of names that another index shares (case-insensitively: macOS and Windows folders ignore case)."""
    count: dict[str, int] = {}
    for n in names:
        count[n.casefold()] = count.get(n.casefold(), 0) + 1
    return {i for i, n in enumerate(names) if count[n.casefold()] > 1}


def sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
