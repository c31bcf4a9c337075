"""Large graphs: the rewrite's structure on long chains (its speed is measured in benchmarks/rewrite.py)."""
import numpy as np
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.errors import OnnxplainError
from onnxplain.rewrite.graph import COTANGENT, GRAD, Request, build, toposort


def relu_add_chain(steps: int, shift: float):
    """x → (Relu, Add shift) × steps → global average pool → Gemm to 2 classes, on a 3×4×4 input."""
    nodes, prev = [], "x"
    for i in range(steps):
        nodes += [helper.make_node("Relu", [prev], [f"r{i}"]), helper.make_node("Add", [f"r{i}", "shift"], [f"a{i}"])]
        prev = f"a{i}"
    nodes += [helper.make_node("GlobalAveragePool", [prev], ["gap"]), helper.make_node("Flatten", ["gap"], ["flat"]),
              helper.make_node("Gemm", ["flat", "W"], ["logits"], transB=1)]
    w = np.array([[1, 2, 3], [-1, 0.5, 2]], np.float32)
    inits = [numpy_helper.from_array(np.float32(shift), "shift"), numpy_helper.from_array(w, "W")]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), w


def test_gradient_of_a_5000_layer_chain():
    """d logits[c] / dx through 2500 Relu/Add pairs: W[c, channel]/16 where x stays positive through every shift,
    else 0 (each Relu passes the gradient only where its input is > 0)."""
    steps, shift = 2500, -1e-3
    proto, w = relu_add_chain(steps, shift)
    model = onnxplain.load(proto, device="cpu", preprocessing={"size": [4, 4]})
    x = np.random.default_rng(0).uniform(-0.5, 3.5, (2, 3, 4, 4)).astype(np.float32)
    alive, a = np.ones_like(x, bool), x.copy()
    for _ in range(steps):
        alive &= a > 0
        a = np.maximum(a, 0) + np.float32(shift)
    assert 0 < alive.mean() < 1  # the chain cuts some pixels' gradient and keeps others'
    cotangent = np.array([[1, 0], [0, 1]], np.float32)
    grad = model.session(Request(differentiate=(model.score,), wrt=(model.input,))).run(
        [GRAD.format(model.input)], {model.input: x, COTANGENT.format(model.score): cotangent})[0]
    expected = alive * (cotangent @ w)[:, :, None, None] / 16
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=0)


def _node(op, inputs, outputs):
    return gs.Node(op, name=outputs[0].name, inputs=inputs, outputs=outputs)


def test_toposort_orders_by_depth_in_linear_walk():
    """Nodes listed backwards (deeper than Python's recursion limit, which graphsurgeon's toposort recurses to) come
    out producers first, ordered by depth, in the given order within a depth."""
    x = gs.Variable("x", np.float32, [1])
    ts = [gs.Variable(f"t{i}", np.float32, [1]) for i in range(3000)]
    chain = [_node("Relu", [x if i == 0 else ts[i - 1]], [ts[i]]) for i in range(3000)]
    side = _node("Neg", [x], [gs.Variable("side", np.float32, [1])])
    graph = gs.Graph(nodes=[*reversed(chain), side], inputs=[x], outputs=[ts[-1]])
    assert toposort(graph).nodes == [chain[0], side, *chain[1:]]


def test_toposort_refuses_a_cycle():
    a, b, x = gs.Variable("a"), gs.Variable("b"), gs.Variable("x")
    graph = gs.Graph(nodes=[_node("Add", [x, b], [a]), _node("Relu", [a], [b])], inputs=[x], outputs=[b])
    with pytest.raises(OnnxplainError, match="cycle"):
        toposort(graph)


# -- one model shared by threads, and its bounded session cache ---------------------------------------------------
JOBS = [("saliency", {}), ("gradcam", {}), ("occlusion", {"window": 8, "stride": 4}), ("saliency", {"target": 3})]


def test_threads_sharing_a_model_match_serial_calls(monkeypatch):
    """Four threads explaining with one fresh Model at once (sessions built while they race) give the serial maps,
    and each distinct request's graph is built once."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import onnxplain.model
    from conftest import MODELS

    path = MODELS / "zoo" / "resnet_dynamo.onnx"
    x = np.load(MODELS / "zoo" / "resnet.npz")["x"]
    serial = onnxplain.load(path, device="cpu", preprocessing="unit")
    expected = [onnxplain.explain(serial, x, name, **kw) for name, kw in JOBS]

    built, start = [], threading.Barrier(len(JOBS))
    monkeypatch.setattr(onnxplain.model, "build",
                        lambda proto, request, *rest, **kw: built.append(request) or build(proto, request, *rest, **kw))
    shared = onnxplain.load(path, device="cpu", preprocessing="unit")

    def explain(job):
        start.wait()
        return onnxplain.explain(shared, x, job[0], **job[1])
    with ThreadPoolExecutor(len(JOBS)) as pool:
        got = list(pool.map(explain, JOBS))
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g.maps, e.maps, rtol=1e-5, atol=1e-6 * np.abs(e.maps).max())
        np.testing.assert_array_equal(g.targets, e.targets)
    assert len(built) == len(set(built))


def test_session_cache_keeps_the_most_recently_used():
    from onnxplain.runtime import SessionCache

    made, cache = [], SessionCache(size=2)

    def get(key):
        return cache.get(key, lambda: made.append(key) or key.upper())
    assert [get(k) for k in "abacb"] == list("ABACB")
    assert made == list("abcb")  # c evicted b (a was used after it); a was kept
