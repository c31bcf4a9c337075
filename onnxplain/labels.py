"""Class names: read from a labels file, from the metadata keys that exporters write, and targets given by name."""
from __future__ import annotations

import ast
import difflib
import json
import reprlib
from pathlib import Path

from .errors import OnnxplainError

# metadata_props keys holding class names, as exporters write them: Ultralytics `names` (a Python dict literal
# "{0: 'person', ...}"), PaddleClas/PaddleOCR `character` (one name per line), and plain `labels`/`classes`
METADATA_KEYS = ("labels", "classes", "names", "character")


def parse(text: str, origin: str) -> list[str]:
    """Class names from text: a JSON or Python list of names, a dict {index: name} covering 0..n-1, or one name per
    line (blank lines at the ends dropped)."""
    stripped = text.strip()
    value = None
    if stripped[:1] in ("[", "{"):
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError:
            try:
                value = ast.literal_eval(stripped)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                raise OnnxplainError(f"{origin} starts like a JSON list or object but is not one") from None
    if value is None:
        lines = text.splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        while lines and not lines[0].strip():
            lines.pop(0)
        return [line.strip() for line in lines]
    return as_list(value, origin)


def as_list(value, origin: str) -> list[str]:
    """A list of names, or a dict {index: name} (keys whole numbers or their text) covering 0..n-1, as a list."""
    if isinstance(value, dict):
        try:
            index = {int(k): v for k, v in value.items()}
        except (TypeError, ValueError):
            raise OnnxplainError(f"{origin}: the keys of a labels object must be class numbers, not "
                                 f"{reprlib.repr(next(iter(value)))}") from None
        if sorted(index) != list(range(len(index))):
            missing = next(i for i in range(len(index) + 1) if i not in index)
            raise OnnxplainError(f"{origin}: the labels object numbers classes 0..{len(index) - 1} with gaps "
                                 f"(class {missing} has no name)")
        value = [index[i] for i in range(len(index))]
    if not isinstance(value, (list, tuple)) or not all(isinstance(s, str) for s in value):
        raise OnnxplainError(f"{origin} must hold a list of names or an object {{index: name}}, not "
                             f"{reprlib.repr(value)}")
    return list(value)


def read(path: str | Path) -> list[str]:
    """The class names in a labels file: one per line, or JSON (a list, or an object {index: name})."""
    path = Path(path)
    if not path.is_file():
        raise OnnxplainError(f"labels file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise OnnxplainError(f"cannot read labels file {path}: {exc}") from None
    names = parse(text, f"labels file {path}")
    if not names:
        raise OnnxplainError(f"labels file {path} holds no names")
    return names


def from_metadata(meta: dict[str, str], classes: int) -> tuple[list[str], str] | None:
    """(names, key) from the first metadata key in METADATA_KEYS whose names number `classes`; None if none does
    (an OCR alphabet that the blank class makes one longer is no list of class names)."""
    for key in METADATA_KEYS:
        if key in meta:
            try:
                names = parse(meta[key], f"metadata '{key}'")
            except OnnxplainError:
                continue
            if len(names) == classes:
                return names, key
    return None


def resolve(name: str, labels: list[str] | None) -> int:
    """The class a name stands for: its number, else the class whose name it is (case-insensitive), else the one
    class whose name starts with it; ambiguous or unknown names are refused in one line with the candidates."""
    text = name.strip()
    try:
        return int(text)
    except ValueError:
        pass
    if not labels:
        raise OnnxplainError(f"target '{text}' is not a class number, and the model has no class names (give "
                             f"--labels FILE)")
    low = text.casefold()
    exact = [i for i, s in enumerate(labels) if s.casefold() == low]
    found = exact or [i for i, s in enumerate(labels) if s.casefold().startswith(low)]
    if len(found) == 1:
        return found[0]
    if found:
        shown = ", ".join(f"{labels[i]} [{i}]" for i in found[:10]) + (f" and {len(found) - 10} more"
                                                                         if len(found) > 10 else "")
        raise OnnxplainError(f"target '{text}' is ambiguous: {shown}; give more of the name or the class number")
    close = difflib.get_close_matches(low, [s.casefold() for s in labels], n=5, cutoff=0.6)
    near = [next(i for i, s in enumerate(labels) if s.casefold() == c) for c in close]
    hint = ("; did you mean " + ", ".join(f"{labels[i]} [{i}]" for i in near) + "?") if near else ""
    raise OnnxplainError(f"target '{text}' is not a class name of this model{hint}")
