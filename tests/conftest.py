import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
MOBILENET = MODELS / "mobilenet_v2.onnx"
IMAGES = [MODELS / "images" / "chelsea.png", MODELS / "images" / "coffee.png"]
ZOO = sorted({p.stem.rsplit("_", 1)[0] for p in (MODELS / "zoo").glob("*.onnx")})
TRANSFORMERS = sorted({p.stem.rsplit("_", 1)[0] for p in (MODELS / "transformer").glob("*.onnx")})
EXPORTERS = ("dynamo", "legacy")
sys.path.insert(0, str(MODELS))  # architectures.py, for the torch reference tests


def softmax(z):
    """Softmax over the last axis, the references' own (float64 in, float64 out)."""
    import numpy as np
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def rel_err(a, b):
    """max |a - b| / max |b|: the relative error used throughout."""
    import numpy as np
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def zoo(name, exporter="dynamo"):
    """A zoo model (loaded on the CPU, [0, 1] inputs) and its committed torch references."""
    import numpy as np

    import onnxplain
    return (onnxplain.load(MODELS / "zoo" / f"{name}_{exporter}.onnx", device="cpu", preprocessing="unit"),
            np.load(MODELS / "zoo" / f"{name}.npz"))


def exposed(m, x, layers, targets):
    """Activations and ∂y_c/∂A (float64) at each of `layers`, from a plain gradient session fed a one-hot
    cotangent of `targets`: the inputs of the methods' independent references."""
    import numpy as np

    from onnxplain.rewrite.graph import COTANGENT, GRAD, Request
    sess = m.session(Request(expose=tuple(layers), differentiate=(m.score,), wrt=tuple(layers)))
    out = sess.run([*layers, *(GRAD.format(n) for n in layers)],
                   {m.input: x, COTANGENT.format(m.score): np.eye(m.num_classes, dtype=np.float32)[targets]})
    return [o.astype(np.float64) for o in out[:len(layers)]], [o.astype(np.float64) for o in out[len(layers):]]


@pytest.fixture(scope="session")
def mobilenet():
    import onnxplain
    return onnxplain.load(MOBILENET, device="cpu")


@pytest.fixture(scope="session")
def audited(tmp_path_factory):
    """A real audit's folder (tests/audit_fixture.py), report included, and its results."""
    import json

    from audit_fixture import make_audit
    out = make_audit(tmp_path_factory.mktemp("audit"))
    return out, json.loads((out / "results.json").read_text(encoding="utf-8"))
