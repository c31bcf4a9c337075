"""One exception type for everything a user can get wrong: its message is one line, fit to print as is."""
from contextlib import contextmanager


def first_line(exc: BaseException) -> str:
    """An exception's message on one line, cut after 500 characters (libraries' messages can span pages, and some
    break a sentence over lines), or its type's name."""
    text = " ".join(str(exc).split())
    return (text if len(text) <= 500 else text[:499] + "…") or type(exc).__name__


@contextmanager
def writing(path, what: str = ""):
    """Turn an OSError while writing `path` (a `what`, e.g. "checkpoint ") into one line that names it."""
    try:
        yield
    except OSError as exc:
        raise OnnxplainError(f"cannot write {what}{path}: {exc.strerror or exc}") from None


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


class UnsupportedOpError(OnnxplainError):
    """The white-box path has no gradient rule for an op of the model."""

    def __init__(self, op: str, node: str, opset: int, why: str = "no gradient rule"):
        self.op, self.node, self.opset = op, node, opset
        super().__init__(
            f"{why} for {op} (node '{node}', opset {opset}); explain this model with a black-box "
            f"method instead (occlusion, rise, lime, kernelshap), which only runs the model"
        )
