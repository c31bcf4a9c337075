"""The pipelined batch path: files read on worker threads while the model runs, results written by another thread."""
import threading

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import IMAGES, MOBILENET
from onnxplain_cli.main import cli
from PIL import Image

import onnxplain
from onnxplain import runtime
from onnxplain.errors import OnnxplainError
from onnxplain.runtime import prefetched


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Five different images: the two photos and crops of them (each image's map differs from the others')."""
    root = tmp_path_factory.mktemp("folder")
    paths = []
    for i in range(5):
        with Image.open(IMAGES[i % 2]) as im:
            w, h = im.size
            cut = im.crop((i * 20, i * 10, w - i * 15, h)) if i >= 2 else im.copy()
        paths.append(root / f"image{i}.png")
        cut.save(paths[-1])
    return paths


@pytest.mark.parametrize("method, params", [("gradcam", {}), ("ig", {"steps": 4}), ("smoothgrad", {"samples": 3}),
                                            ("occlusion", {"window": 112, "stride": 112})])
def test_batches_equal_explain_on_all_files_at_once(mobilenet, folder, method, params):
    whole = onnxplain.explain(mobilenet, folder, method, target=[281, 967, 281, 967, 5], **params)
    parts = list(onnxplain.explain_images(mobilenet, folder, method, target=[281, 967, 281, 967, 5], batch_size=2,
                                          **params))
    assert [list(p) for p, _ in parts] == [folder[0:2], folder[2:4], folder[4:5]]
    for name in ("maps", "attributions", "targets", "logits"):
        got = np.concatenate([getattr(e, name) for _, e in parts])
        np.testing.assert_allclose(got, getattr(whole, name), rtol=1e-5, atol=1e-5 * np.abs(got).max())
    assert sum((e.views for _, e in parts), []) and all(
        (a == b).all() for a, b in zip(sum((e.views for _, e in parts), []), whole.views))


def test_one_target_list_applies_to_every_batch(mobilenet, folder):
    parts = list(onnxplain.explain_images(mobilenet, folder[:3], "gradcam", target=[[281, 967]], batch_size=2))
    assert [e.targets.tolist() for _, e in parts] == [[[281, 967]] * 2, [[281, 967]]]


def test_bad_parameters_fail_before_any_file_is_read_and_a_bad_file_at_its_batch(mobilenet, folder, tmp_path):
    with pytest.raises(OnnxplainError, match="unknown method"):
        onnxplain.explain_images(mobilenet, ["missing.png"], "nope")
    with pytest.raises(OnnxplainError, match="workers must be"):
        onnxplain.explain_images(mobilenet, folder, "gradcam", workers=0)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    explained = onnxplain.explain_images(mobilenet, [*folder[:2], junk], "gradcam", batch_size=2)
    assert len(next(explained)[0]) == 2
    with pytest.raises(OnnxplainError, match="cannot read image"):
        next(explained)


def test_prefetched_keeps_order_and_makes_at_most_ahead_items_before_they_are_asked_for():
    started, lock = [], threading.Lock()

    def make(job):
        with lock:
            started.append(job)
        return job * job

    for ahead, workers in ((1, 1), (2, 2), (3, 1)):
        started.clear()
        gen = prefetched(make, range(20), ahead, workers)
        got = []
        for value in gen:
            got.append(value)
            with lock:  # the consumer holds len(got) results; at most `ahead` more are made or being made
                assert len(started) <= len(got) + ahead
            if len(got) == 7:
                break
        gen.close()  # what is not started yet is cancelled
        assert got == [j * j for j in range(7)] and len(started) <= 7 + ahead


def test_cli_over_many_files_writes_what_the_api_gives(mobilenet, folder, tmp_path):
    result = CliRunner().invoke(cli, ["explain", str(MOBILENET), *map(str, folder), "-m", "gradcam",
                                      "--batch-size", "2", "--device", "cpu", "-o", str(tmp_path)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert [line.split(":")[0] for line in result.output.splitlines() if "explained" in line] == list(map(str, folder))
    e = onnxplain.explain(mobilenet, folder, "gradcam")
    for path, expected in zip(folder, e.maps):
        got = np.load(tmp_path / f"{path.stem}.gradcam.npy")
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        assert (tmp_path / f"{path.stem}.gradcam.png").is_file()


def summing_session(shape, powers, fixed_rows):
    """A session of the summing graph alone (`rewrite.graph.summed`) over a fed `part`."""
    import onnx_graphsurgeon as gs
    from onnxplain.rewrite.builder import Builder
    from onnxplain.rewrite.graph import summed
    part = gs.Variable("part", np.float32, ["N", *shape])
    graph = gs.Graph(inputs=[part], opset=17)
    graph.outputs = summed(Builder(graph, 17), part, powers)
    return runtime.Session(gs.export_onnx(graph, ir_version=8), "cpu", fixed_rows=fixed_rows)


def test_sums_per_image_equal_their_definition_in_the_graph_on_the_device_and_off_it_and_on_the_host(monkeypatch):
    rng = np.random.default_rng(0)
    shape = (3, 64, 64)  # large enough that onnxruntime splits a ScatterND over threads
    rows = np.repeat([0, 1, 2], [3, 16, 2])  # image 1's rows span both chunks below
    part, weights = rng.standard_normal((len(rows), *shape)).astype(np.float32), rng.random(len(rows))
    expected = [np.zeros((3, *shape)), np.zeros((3, *shape))]
    for r, (i, w) in enumerate(zip(rows, weights)):
        expected[0][i] += w * part[r].astype(np.float64)
        expected[1][i] += w * part[r].astype(np.float64) ** 2
    for resident, fixed_rows in ((True, False), (False, False), (True, True), (False, True)):
        monkeypatch.setattr(runtime, "RESIDENT", resident)
        session = summing_session(shape, (1, 2), fixed_rows)
        sums = runtime.Sums(3, shape, (1, 2))
        sums.step(session, {"part": part[:12]}, rows[:12], weights[:12], 16)  # with fixed rows: padded to 16
        sums.step(session, {"part": part[12:]}, rows[12:], weights[12:], 16)
        assert all(isinstance(t, runtime.ort.OrtValue) == resident for t in sums.totals)
        assert sorted(session._by_rows) == ([16] if fixed_rows else [])
        for got, want in zip(sums.result(), expected):  # the rows of a chunk are summed in float32
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    on_host = runtime.Sums(3, shape, (1, 2))
    on_host.add(rows[:12], weights[:12], part[:12])
    on_host.add(rows[12:], weights[12:], part[12:])
    for got, want in zip(on_host.result(), expected):  # in float64
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * np.abs(want).max())


@pytest.mark.parametrize("method, params", [("ig", {"steps": 5}), ("smoothgrad", {"samples": 3}),
                                            ("vargrad", {"samples": 3, "of": "gradxinput"})])
def test_multi_pass_methods_give_the_same_results_with_values_kept_on_the_device(mobilenet, method, params,
                                                                                   monkeypatch):
    x = onnxplain.explain(mobilenet, IMAGES[:1], "saliency").attributions  # any two inputs of the right shape
    x = np.concatenate([x * 40, -x * 30]).astype(np.float32)
    results = {}
    for resident in (True, False):
        monkeypatch.setattr(runtime, "RESIDENT", resident)
        results[resident] = onnxplain.explain(mobilenet, x, method, target=[281, 5], batch_size=4, **params)
    for name in ("attributions", "maps"):
        np.testing.assert_array_equal(getattr(results[True], name), getattr(results[False], name))
    assert np.abs(results[True].attributions).max() > 0


def test_rows_of_a_model_that_runs_one_image_at_a_time_are_not_run_together(tmp_path):
    """Dynamic quantisation takes its range from the whole batch: such a model's IG and SmoothGrad rows run one at a
    time on the resident path too, so an image's result does not depend on the rows beside it."""
    from test_quantised import IMAGES as SMALL, _quantised
    with pytest.warns(UserWarning, match="straight through"):
        m = onnxplain.load(_quantised(tmp_path, "dynamic"), preprocessing="unit", device="cpu")
        for method, params in (("ig", {"steps": 3}), ("smoothgrad", {"samples": 3})):
            together = onnxplain.explain(m, SMALL, method, target=3, batch_size=8, **params).attributions
            alone = onnxplain.explain(m, SMALL, method, target=3, batch_size=1, **params).attributions
            np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6 * np.abs(alone).max())


def test_a_list_of_methods_runs_each_on_the_batch_read_once(mobilenet, folder):
    ig = onnxplain.methods.get("ig", steps=3)
    parts = list(onnxplain.explain_images(mobilenet, folder[:3], ["gradcam", ig], target=281, batch_size=2))
    assert [[e.method for e in found] for _, found in parts] == [["gradcam", "ig"]] * 2
    for method, params, n in (("gradcam", {}, 0), ("ig", {"steps": 3}, 1)):
        whole = onnxplain.explain(mobilenet, folder[:3], method, target=281, **params)
        got = np.concatenate([found[n].maps for _, found in parts])
        np.testing.assert_allclose(got, whole.maps, rtol=1e-5, atol=1e-5 * np.abs(got).max())


@pytest.mark.parametrize("method, params", [("ig", {"steps": 7}), ("smoothgrad", {"samples": 7})])
def test_padded_row_counts_on_the_resident_path_leave_the_results_unchanged(method, params, monkeypatch):
    """On CUDA each session runs fixed row counts: a chunk of 3 rows runs as 4, the padded row kept on the device
    with the rest and given weight 0 in the sums. Forced here on the CPU."""
    import functools

    from onnxplain import model as model_module
    from conftest import zoo
    m, ref = zoo("resnet")
    x = ref["x"][:1]
    want = onnxplain.explain(m, x, method, target=1, batch_size=4, **params)
    monkeypatch.setattr(model_module, "Session", functools.partial(runtime.Session, fixed_rows=True))
    fixed, _ = zoo("resnet")  # a fresh model: its sessions made in fixed-row mode
    got = onnxplain.explain(fixed, x, method, target=1, batch_size=4, **params)  # chunks of 4 and 3 rows
    counts = [sorted(s._by_rows) for s in fixed._sessions._sessions.values()]
    assert [4] in counts and not any(3 in c for c in counts), counts  # the gradient rows ran as 4 and 4
    np.testing.assert_allclose(got.attributions, want.attributions, rtol=1e-5,
                               atol=1e-6 * np.abs(want.attributions).max())
