import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
MOBILENET = MODELS / "mobilenet_v2.onnx"
IMAGES = [MODELS / "images" / "chelsea.png", MODELS / "images" / "coffee.png"]
ZOO = sorted({p.stem.rsplit("_", 1)[0] for p in (MODELS / "zoo").glob("*.onnx")})
EXPORTERS = ("dynamo", "legacy")
sys.path.insert(0, str(MODELS))  # architectures.py, for the torch reference tests


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


@pytest.fixture(scope="session")
def mobilenet():
    import onnxplain
    return onnxplain.load(MOBILENET, device="cpu")
