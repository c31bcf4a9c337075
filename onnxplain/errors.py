"""One exception type for everything a user can get wrong: its message is one line, fit to print as is."""
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


def first_line(exc: BaseException) -> str:
    """An exception's message on one line, cut after 500 characters (libraries' messages can span pages, and some
    break a sentence over lines), or its type's name."""
    text = " ".join(str(exc).split())
    return (text if len(text) <= 500 else text[:499] + "…") or type(exc).__name__


@contextmanager
def writing(path, what: str = ""):
    """Write `path` (a `what`, e.g. "checkpoint ") through a temporary file beside it, renamed over it when the block
    succeeds: an interrupted or failed write leaves no half-written file, and a link at `path` is replaced, never
    written through. Yields the temporary path; makes the folder; an OSError becomes one line naming `path`."""
    path, tmp = Path(path), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part" + path.suffix)
        os.close(fd)
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # as a file created by open() would be, not mkstemp's 0600
        os.replace(tmp, path)
    except OSError as exc:
        raise OnnxplainError(f"cannot write {what}{path}: {exc.strerror or exc}") from None
    finally:
        if tmp is not None and os.path.lexists(tmp):
            os.unlink(tmp)


_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextmanager
def quiet_onnxruntime():
    """Mute onnxruntime's default logger, which sessions that libraries create write to, while their failures are
    reported in one line by the caller; then restore onnxruntime's default severity (warnings)."""
    import onnxruntime as ort
    ort.set_default_logger_severity(4)
    try:
        yield
    finally:
        ort.set_default_logger_severity(2)


class OnnxplainError(Exception):
    """A problem with the user's model, input or request, described in one sentence."""


class NoDefaultTarget(OnnxplainError):
    """A model whose outputs give no default target (several, none of them class scores, a detector's or the only
    segmentation map): `shapes` holds each float output's shape for one image, for `inspect` to describe them."""

    def __init__(self, message: str, shapes: dict):
        self.shapes = shapes
        super().__init__(message)


class UnsupportedOpError(OnnxplainError):
    """The white-box path has no gradient rule for an op of the model."""

    def __init__(self, op: str, node: str, opset: int, why: str = "no gradient rule"):
        self.op, self.node, self.opset, self.why = op, node, opset, why
        super().__init__(
            f"{why} for {op} (node '{node}', opset {opset}); explain this model with a black-box "
            f"method instead (occlusion, rise, lime, kernelshap), which only runs the model"
        )

    def __reduce__(self):  # pickled as made (a Ray worker sends it back)
        return UnsupportedOpError, (self.op, self.node, self.opset, self.why)
