"""The runtime's fixed-row mode (used on CUDA): padded chunks, one onnxruntime session per row count."""
import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnxplain import runtime

RNG = np.random.default_rng(0)


def two_input_model():
    """A per-row model of an image batch and an int64 index per row: y = GAP(Conv(x)) and the picked channel."""
    w = numpy_helper.from_array(RNG.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["g"]),
             helper.make_node("Flatten", ["g"], ["y"]),
             helper.make_node("Unsqueeze", ["k", "one"], ["k1"]),
             helper.make_node("GatherElements", ["y", "k1"], ["picked"], axis=1)]
    graph = helper.make_graph(
        nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8]),
                     helper.make_tensor_value_info("k", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("picked", TensorProto.FLOAT, ["N", 1])],
        [w, numpy_helper.from_array(np.array([1], np.int64), "one")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def feeds(n):
    return {"x": RNG.normal(size=(n, 3, 8, 8)).astype(np.float32), "k": RNG.integers(0, 4, n).astype(np.int64)}


def test_ladder_is_the_smallest_power_of_two_or_the_batch_size_that_holds_the_chunk():
    assert [runtime.ladder(m, 16) for m in (1, 2, 3, 5, 8, 9, 16)] == [1, 2, 4, 8, 8, 16, 16]
    assert [runtime.ladder(m, 50) for m in (33, 50)] == [50, 50]


def test_fixed_rows_give_the_plain_results_with_one_session_per_row_count():
    model = two_input_model()
    plain, fixed = runtime.Session(model, "cpu"), runtime.Session(model, "cpu", fixed_rows=True)
    f = feeds(37)
    want = plain.run(["y", "picked"], f, batch_size=16)
    got = fixed.run(["y", "picked"], f, batch_size=16)  # chunks of 16, 16 and 5, the last run padded to 8 rows
    for a, b in zip(got, want):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert sorted(fixed._by_rows) == [8, 16]
    assert not plain._by_rows  # the plain mode keeps its one session


def test_first_row_count_reuses_the_session_made_at_start_and_counts_are_bounded():
    model = two_input_model()
    fixed, plain = runtime.Session(model, "cpu", fixed_rows=True), runtime.Session(model, "cpu")
    f = feeds(1)
    fixed.run(["y"], f)
    assert fixed._by_rows[1] is fixed.session
    for n in (2, 3, 5, 9, 17, 33):
        f = feeds(n)
        got = fixed.run(["picked"], f, batch_size=64)[0]
        assert got.shape == (n, 1)
        want = plain.run(["picked"], f)[0]
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert len(fixed._by_rows) == runtime.ROW_SESSIONS
    assert list(fixed._by_rows) == [8, 16, 32, 64]  # the most recently used kept


def test_fixed_rows_default_to_cuda_only():
    assert runtime.Session(two_input_model(), "cpu").fixed_rows is False
