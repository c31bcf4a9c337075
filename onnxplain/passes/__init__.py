"""Load-time normalisation passes: each rewrites one awkward structure of real exports into the form the rewrite and
the rules expect, and says what it did, so that `onnxplain inspect` can list it.

A pass is one small function ``pass_(model) -> (model, note)`` in its own module, registered with :func:`register`;
``note`` is one line for `inspect` (None when the pass changed nothing). Passes run in the order of ``PASSES`` on a
model that the ONNX checker accepted, before the batch is made dynamic. A pass returns its input unchanged (not a
copy) when it has nothing to do, and changes a `writable(model)` when it has: one copy per load, whichever passes
act (a copy of a 100 MB model costs about a second). It raises OnnxplainError with one line when the model cannot be
normalised.
"""
from __future__ import annotations

from contextvars import ContextVar
from typing import Callable

import onnx

Pass = Callable[[onnx.ModelProto], "tuple[onnx.ModelProto, str | None]"]
PASSES: list[tuple[str, Pass]] = []
_OWNED: ContextVar[set | None] = ContextVar("owned", default=None)  # ids of the copies made in this `normalise`


def register(name: str):
    """Append a pass to PASSES under `name` (the order of registration is the order of running)."""
    def add(fn: Pass) -> Pass:
        PASSES.append((name, fn))
        return fn
    return add


def normalise(model: onnx.ModelProto) -> tuple[onnx.ModelProto, tuple[tuple[str, str], ...]]:
    """`model` (unchanged) after every pass, and (pass name, note) for each pass that changed something."""
    notes = []
    owned = _OWNED.set(set())
    try:
        for name, fn in PASSES:
            model, note = fn(model)
            if note:
                notes.append((name, note))
    finally:
        _OWNED.reset(owned)
    return model, tuple(notes)


def writable(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` for a pass to change in place: a copy, except inside `normalise` where an earlier pass copied it."""
    owned = _OWNED.get()
    if owned is not None and id(model) in owned:
        return model
    copy = onnx.ModelProto.FromString(model.SerializeToString())
    if owned is not None:
        owned.add(id(copy))
    return copy


from . import ir_version  # noqa: E402,F401  (registers; the order of these imports is the order of the passes)
from . import dims  # noqa: E402,F401
from . import constants  # noqa: E402,F401
from . import ifs  # noqa: E402,F401
from . import precision  # noqa: E402,F401
from . import opset  # noqa: E402,F401
from . import output_shapes  # noqa: E402,F401
from . import input_type  # noqa: E402,F401
from . import head  # noqa: E402,F401
