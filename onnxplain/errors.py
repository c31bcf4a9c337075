"""One exception type for everything a user can get wrong: its message is one line, fit to print as is."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (libraries' messages can span pages), or its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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
