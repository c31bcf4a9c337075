"""The run manifest: what produced the files of an output folder (`onnxplain-run.json`), one record per run."""
from __future__ import annotations

import json
import os
import platform
from dataclasses import fields
from importlib import metadata
from pathlib import Path

import numpy as np

from .errors import OnnxplainError, writing

NAME = "onnxplain-run.json"


def jsonable(value):
    """`value` as JSON data: numbers, text, lists and objects as they are (numpy's too); arrays of more than 64
    values by their shape, functions by their qualified name, anything else by its repr."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float, np.integer, np.floating, np.bool_)):
        value = value.item() if isinstance(value, np.generic) else value
        return value if not isinstance(value, float) or np.isfinite(value) else str(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist()) if value.size <= 64 else f"array {'x'.join(map(str, value.shape))}"
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if callable(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', type(value).__name__)}"
    return repr(value)


def parameters(method) -> dict:
    """A method's parameters with the values it runs with (defaults filled in), as JSON data."""
    return {f.name: jsonable(getattr(method, f.name)) for f in fields(method) if f.name != "progress"}


def versions() -> dict:
    """The versions of onnxplain, onnxruntime, onnx, numpy and Python."""
    import onnx
    import onnxruntime
    try:
        own = metadata.version("onnxplain")
    except metadata.PackageNotFoundError:
        own = "unknown"
    return {"onnxplain": own, "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def model_record(model) -> dict:
    """The model's file and hash, its input and score, where its preprocessing and labels came from."""
    return {"path": str(Path(model.path).resolve()) if model.path else None,
            "sha256": model.sha256,
            "input": model.input, "output": model.output, "score": model.score, "classes": model.num_classes,
            "labels": model.labels_from or None,
            "preprocessing": {**model.preprocessing.to_dict(), "from": model.preprocessing_from,
                              "guessed": model.preprocessing_guessed}}


def read(folder: Path, force: bool) -> list[dict]:
    """The runs recorded in `folder`'s manifest ([] if it has none). A file there that is no manifest is refused,
    unless `force` (then it is replaced)."""
    path = Path(folder) / NAME
    if not os.path.lexists(path):
        return []
    try:
        if path.is_symlink():
            raise ValueError("a link")
        runs = json.loads(path.read_text(encoding="utf-8"))["runs"]
        if isinstance(runs, list) and all(isinstance(r, dict) for r in runs):
            return runs
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        pass
    if force:
        return []
    raise OnnxplainError(f"{path} exists and is not an onnxplain run manifest; use --force to replace it")


def write(folder: Path, runs: list[dict]) -> Path:
    path = Path(folder) / NAME
    with writing(path, "run manifest ") as tmp:
        tmp.write_text(json.dumps({"runs": runs}, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
