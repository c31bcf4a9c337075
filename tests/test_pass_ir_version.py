"""IR versions: onnx 1.23's helpers write IR 14 and onnxruntime 1.31 reads up to IR 13, so a model saved by the
installed onnx could not be explained (the rewritten graph refused: 'Unsupported model IR version: 14'); it is now
declared at the newest IR version onnxruntime reads, where its opsets allow it, and refused in one line where not."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import rel_err
from test_load import tiny_cnn

import onnxplain
from onnxplain.passes.ir_version import lower_ir, needed_ir, readable_ir

X = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)


def _runs(model: onnx.ModelProto) -> bool:
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return True
    except Exception:  # noqa: BLE001
        return False


def test_readable_ir_is_the_newest_version_onnxruntime_runs():
    model = tiny_cnn()
    model.ir_version = readable_ir()
    assert _runs(model)
    model.ir_version = readable_ir() + 1
    assert not _runs(model) or readable_ir() == onnx.IR_VERSION  # newer than onnx itself knows: not tried


@pytest.mark.skipif(readable_ir() >= onnx.IR_VERSION, reason="this onnxruntime reads every IR version onnx writes")
def test_a_newer_ir_version_is_declared_as_the_newest_readable_and_explained_alike():
    newer = tiny_cnn()
    newer.ir_version = onnx.IR_VERSION
    assert not _runs(newer)
    m = onnxplain.load(newer, preprocessing="unit", device="cpu")
    assert dict(m.normalised)["ir_version"] == (f"IR version {onnx.IR_VERSION} declared as {readable_ir()}, the "
                                                f"newest onnxruntime {ort.__version__} reads")
    plain = onnxplain.load(tiny_cnn(), preprocessing="unit", device="cpu")
    assert "ir_version" not in dict(plain.normalised)
    for method in ("saliency", "gradcam"):
        want = onnxplain.explain(plain, X, method, target=[3, 4]).maps
        assert rel_err(onnxplain.explain(m, X, method, target=[3, 4]).maps, want) < 1e-6


def test_the_ir_version_an_opset_needs():
    model = tiny_cnn()
    del model.opset_import[:]
    model.opset_import.append(onnx.helper.make_opsetid("", 17))
    assert needed_ir(model) == 8  # onnx 1.13: IR 8, opset 17
    model.opset_import.append(onnx.helper.make_opsetid("ai.onnx.ml", 3))
    assert needed_ir(model) == 8
    model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))  # not onnx's: no bound
    assert needed_ir(model) == 8
    if readable_ir() < onnx.IR_VERSION:  # an opset only the newest IR has cannot be declared older
        newest = max(row[2] for row in onnx.helper.VERSION_TABLE)
        model.opset_import[0].version = newest
        model.ir_version = onnx.IR_VERSION
        with pytest.raises(onnxplain.OnnxplainError, match=f"imports ai.onnx {newest}, .*, which needs IR version "
                                                            f"{onnx.IR_VERSION}; onnxruntime .* reads IR versions up "
                                                            f"to {readable_ir()}: upgrade onnxruntime"):
            lower_ir(model)
