"""Audits: data layouts and ground truth, the per-batch function against the metrics called directly, resume,
bootstrap intervals, results.json, one-line errors."""
import json
import os
from html import escape

import numpy as np
import onnx
import pytest
from PIL import Image
from conftest import IMAGES, MOBILENET
from test_cli import fail, main, run
from test_load import _quantised, tiny_cnn

import onnxplain
from onnxplain.audit import Plan, audit_batch, read_data
from onnxplain.audit import batch as audit_batch_module
from onnxplain.audit import run as audit_run
from onnxplain.audit.data import ground_truth
from onnxplain.audit.results import bootstrap, read_rows, summarise
from onnxplain.errors import OnnxplainError
from onnxplain.explain import forward
from onnxplain.metrics import CHECKS, REGISTRY, Case
from onnxplain.preprocess import prepare

LABELS = ["tabby cat", "golden retriever"] + [f"class{i}" for i in range(2, 10)]
METRICS = ["deletion", "insertion", "drop", "increase"]


def _model(folder, proto=None, **sidecar):
    path = folder / "m.onnx"
    onnx.save(proto or tiny_cnn(), path)
    path.with_suffix(".json").write_text(json.dumps({"preprocessing": {"scale": 1 / 255}, "labels": LABELS,
                                                     **sidecar}))
    return path


def _image(path, seed, size=(8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), np.uint8)).save(path)
    return path


@pytest.fixture
def classes(tmp_path):
    """The tiny CNN with labels, and 5 images in class folders named as its labels (case, underscores) or by number."""
    data = tmp_path / "data"
    for i, (folder, name) in enumerate([("Tabby_Cat", "a.png"), ("Tabby_Cat", "b.png"), ("golden retriever", "c.png"),
                                        ("3", "d.png"), ("3", "e.png")]):
        _image(data / folder / name, i)
    return _model(tmp_path), data


def _strip(rows):
    return sorted(({k: v for k, v in r.items() if k != "seconds"} for r in rows), key=lambda r: (r["id"], r["method"]))


def test_class_folders_are_matched_to_the_labels_by_name_or_number(classes):
    model, data = classes
    found = read_data(onnxplain.load(model, device="cpu"), data)
    assert found.kind == "classes"
    assert [(r.id, r.path, r.label, r.label_name) for r in found.records] == [
        ("3__d.png", "3/d.png", 3, "class3"), ("3__e.png", "3/e.png", 3, "class3"),
        ("Tabby_Cat__a.png", "Tabby_Cat/a.png", 0, "tabby cat"),
        ("Tabby_Cat__b.png", "Tabby_Cat/b.png", 0, "tabby cat"),
        ("golden retriever__c.png", "golden retriever/c.png", 1, "golden retriever")]


def test_audit_rows_equal_the_metrics_called_on_the_same_maps(classes, tmp_path):
    model, data = classes
    m = onnxplain.load(model, device="cpu")
    results = onnxplain.audit(m, data, ["saliency", "gradcam"], tmp_path / "out", metrics=METRICS, batch_size=2,
                              options={"deletion": {"step": 4}})
    rows = read_rows(tmp_path / "out")
    records = read_data(m, data).records
    paths, labels = [r.file for r in records], np.array([r.label for r in records])
    x = onnxplain.prepare_images(m, paths)
    for method in ("saliency", "gradcam"):
        e = onnxplain.explain(m, x, method, target=labels)
        case = Case(m, x, e.maps, e.targets)
        own = [r for r in rows if r["method"] == method]
        assert [r["id"] for r in own] == [r.id for r in records] and [r["target"] for r in own] == list(labels)
        for name in METRICS:
            direct = REGISTRY[name](case, **({"step": 4} if name == "deletion" else {}))
            np.testing.assert_allclose([r["metrics"][name] for r in own], direct, rtol=1e-6, atol=1e-9)
            assert results["summary"][method][name]["mean"] == pytest.approx(direct.mean(), rel=1e-6, abs=1e-9)
        for r, want in zip(own, e.maps):  # the maps stored are the maps scored, bit for bit (float16 stored inf
            np.testing.assert_array_equal(np.load(tmp_path / "out" / (r["map"][:-4] + ".npy")), want)  # past 65504)
    shown = escape(json.dumps(["accuracy", "top1"])), escape(json.dumps(results["accuracy"]["top1"]))
    assert 'data-path="%s" data-value="%s"' % shown in (tmp_path / "out" / "report.html").read_text()
    predicted = forward(m, x).argmax(axis=1)
    assert results["accuracy"] == {"top1": pytest.approx(float(np.mean(predicted == labels))), "n": 5}
    per_class = {name: entry["accuracy"] for name, entry in results["per_class"].items()}
    assert per_class["class3"] == pytest.approx(np.mean(predicted[:2] == 3))
    assert results["data"]["classes"] == {"class3": 2, "tabby cat": 2, "golden retriever": 1}
    for metric, order in results["ranking"].items():
        means = [results["summary"][method][metric]["mean"] for method in order]
        assert means == sorted(means, reverse=REGISTRY[metric].better == "higher")


def test_the_bootstrap_interval_is_the_percentiles_of_resampled_means():
    values = np.random.default_rng(3).standard_normal(37) * 2 + 5
    rng = np.random.default_rng(11)
    means = [values[rng.integers(0, len(values), len(values))].mean() for _ in range(1000)]
    assert bootstrap(values, 11) == pytest.approx((values.mean(), np.percentile(means, 2.5),
                                                   np.percentile(means, 97.5)), rel=1e-12)
    assert bootstrap(values, 11) == bootstrap(list(values), 11)
    _, low, high = bootstrap(values, 0)  # about mean ± 1.96 standard errors for a sample of normal values
    assert (high - low) / 2 == pytest.approx(1.96 * values.std() / np.sqrt(len(values)), rel=0.15)


def test_resume_after_an_interruption_gives_the_rows_of_an_uninterrupted_run(classes, tmp_path):
    model, data = classes
    m = onnxplain.load(model, device="cpu")
    whole = onnxplain.audit(m, data, ["saliency", "occlusion"], tmp_path / "whole", metrics=["drop", "deletion"],
                            batch_size=2, params={"occlusion": {"window": 4, "stride": 4}})

    def stop(done, total):
        if done >= 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        onnxplain.audit(m, data, ["saliency", "occlusion"], tmp_path / "cut", metrics=["drop", "deletion"],
                        batch_size=2, params={"occlusion": {"window": 4, "stride": 4}}, progress=stop)
    assert len(read_rows(tmp_path / "cut")) == 4 and not (tmp_path / "cut" / "results.json").exists()
    with open(tmp_path / "cut" / "per_image.jsonl", "a") as f:  # a row cut short by the interruption
        f.write('{"id": "3__e.png", "path": "3/e.pn')
    resumed = onnxplain.audit(m, data, ["saliency", "occlusion"], tmp_path / "cut", metrics=["drop", "deletion"],
                              batch_size=2, params={"occlusion": {"window": 4, "stride": 4}}, resume=True)
    rows = read_rows(tmp_path / "cut")
    assert len(rows) == 10 and len({(r["id"], r["method"]) for r in rows}) == 10
    assert _strip(rows) == _strip(read_rows(tmp_path / "whole"))
    for key in ("summary", "ranking", "accuracy", "per_class", "gallery", "grid", "images"):
        assert resumed[key] == whole[key]
    again = onnxplain.audit(m, data, ["saliency", "occlusion"], tmp_path / "cut", metrics=["drop", "deletion"],
                            batch_size=2, params={"occlusion": {"window": 4, "stride": 4}}, resume=True)
    assert len(read_rows(tmp_path / "cut")) == 10 and again["summary"] == whole["summary"]
    with pytest.raises(OnnxplainError, match="holds an audit of other methods, metrics or target"):
        onnxplain.audit(m, data, ["saliency"], tmp_path / "cut", metrics=["drop"], resume=True)


def test_ctrl_c_keeps_the_finished_batches_and_says_how_to_go_on(classes, tmp_path, capsys, monkeypatch):
    model, data = classes
    args = ["audit", str(model), str(data), "-m", "saliency", "--metric", "drop", "--device", "cpu",
            "--batch-size", "2", "-o", str(tmp_path / "out")]
    real = audit_run.score

    def second_interrupted(model_, batch, plan):
        if read_rows(tmp_path / "out"):
            raise KeyboardInterrupt
        return real(model_, batch, plan)
    monkeypatch.setattr(audit_run, "score", second_interrupted)
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 130 and capsys.readouterr().err.strip() == "interrupted; rerun with --resume"
    assert [r["id"] for r in read_rows(tmp_path / "out")] == ["3__d.png", "3__e.png"]
    monkeypatch.undo()
    assert "5 images (classes: 5 labelled" in run(*args, "--resume")
    assert len(read_rows(tmp_path / "out")) == 5


def test_the_driver_holds_one_batch_of_images_at_a_time(classes, tmp_path, monkeypatch):
    model, data = classes
    m = onnxplain.load(model, device="cpu")
    sizes, alive = [], []
    real = audit_run.read

    def counted(model_, records):
        sizes.append(len(records))
        batch = real(model_, records)
        alive.append(batch)
        return batch

    def scored(model_, batch, plan):
        live = [b for b in alive if b is not batch]
        assert len(live) <= 1  # the batch being scored, and at most the next one read ahead
        rows = audit_batch_module.score(model_, batch, plan)
        alive.remove(batch)
        return rows
    monkeypatch.setattr(audit_run, "read", counted)
    monkeypatch.setattr(audit_run, "score", scored)
    onnxplain.audit(m, data, ["saliency"], tmp_path / "out", metrics=["drop"], batch_size=2)
    assert sizes == [2, 2, 1]


def test_boxes_and_mask_images_become_masks_as_the_pixels_are_resized_and_cropped(tmp_path):
    model = _model(tmp_path, preprocessing={"scale": 1 / 255, "resize": 8})  # shorter side to 8, centre crop 8×8
    m = onnxplain.load(model, device="cpu")
    data = tmp_path / "data"
    _image(data / "wide.png", 0, size=(16, 20))  # 20×16 → 10×8, crop from column 1
    Image.fromarray(np.pad(np.full((16, 8), 255, np.uint8), ((0, 0), (2, 10)))).save(data / "wide_mask.png")
    _image(data / "plain.png", 1)
    (data / "sub").mkdir()
    (data / "gt.csv").write_text("path,label,x1,y1,x2,y2,mask\nwide.png,tabby_cat,2,0,10,16,\n"
                                 "wide.png,tabby_cat,0,4,20,8,\nplain.png,,,,,,\nsub/../wide.png,tabby_cat,,,,,x.png\n")
    with pytest.raises(OnnxplainError, match="line 5: file not found: x.png"):
        read_data(m, data / "gt.csv")
    (data / "gt.csv").write_text("path,label,x1,y1,x2,y2,mask\nwide.png,tabby_cat,2,0,10,16,\n"
                                 "wide.png,tabby_cat,0,4,20,8,\nsub/../wide.png,0,,,,,\n")
    with pytest.raises(OnnxplainError, match="line 4: sub/../wide.png was given another label or mask on .* line 2"):
        read_data(m, data / "gt.csv")
    (data / "gt.csv").write_text("path,label,x1,y1,x2,y2,mask\nwide.png,tabby_cat,2,0,10,16,\n"
                                 "plain.png,,,,,,\nwide_mask.png,0,,,,,wide_mask.png\n")
    records = read_data(m, data / "gt.csv").records
    assert [(r.id, r.label, r.boxes) for r in records] == [("wide.png", 0, ((2.0, 0.0, 10.0, 16.0),)),
                                                          ("plain.png", None, ()), ("wide_mask.png", 0, ())]
    photo = prepare(data / "wide.png", m.preprocessing)
    want = np.zeros((8, 8), bool)
    want[:, :4] = True  # box columns 2..9 of 20 → 1..4 of the 10 resized → 0..3 after the crop from column 1
    assert (ground_truth(records[0], photo, m.preprocessing) == want).all()
    assert (ground_truth(records[2], photo, m.preprocessing) == want).all()  # the same pixels as a mask image
    assert ground_truth(records[1], photo, m.preprocessing) is None
    rows = audit_batch(m, records, Plan({"saliency": {}}, {"pointing_game": {}, "energy_pointing_game": {}}))
    e = onnxplain.explain(m, [data / "wide.png"], "saliency", target=0)
    assert rows[0]["metrics"]["energy_pointing_game"] == pytest.approx(
        REGISTRY["energy_pointing_game"](Case(m, None, e.maps, e.targets, want[None]))[0], rel=1e-6)
    assert rows[1]["metrics"] == {"pointing_game": None, "energy_pointing_game": None}


def test_unreadable_images_and_failing_methods_are_recorded_in_one_line(tmp_path):
    model = tmp_path / "q.onnx"
    onnx.save(_quantised(tiny_cnn(), activations=True), model)
    model.with_suffix(".json").write_text(json.dumps({"preprocessing": {"scale": 1 / 255}}))
    data = tmp_path / "data"
    _image(data / "a.png", 0)
    (data / "broken.png").write_bytes(b"not a png")
    _image(data / "c.png", 1)
    out = run("audit", model, data, "-m", "saliency", "-m", "occlusion", "-p", "window=4", "-p", "stride=4",
              "--metric", "drop", "-o", tmp_path / "out", "--quantized", "exact", "--device", "cpu")
    assert "saliency: failed: " in out
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["data"]["failed"] == [{"path": "broken.png", "reason": results["data"]["failed"][0]["reason"]}]
    assert "cannot read image" in results["data"]["failed"][0]["reason"]
    assert results["methods"]["saliency"]["status"] == "failed" and "\n" not in results["methods"]["saliency"]["reason"]
    assert results["methods"]["occlusion"]["status"] == "ok" and results["summary"]["occlusion"]["drop"]["n"] == 2
    assert "saliency" not in results["ranking"]["drop"]


def test_existing_outputs_and_bad_data_are_refused_in_one_line(classes, tmp_path, capsys):
    model, data = classes
    args = ("audit", model, data, "-m", "saliency", "--metric", "drop", "--device", "cpu", "-o")
    run(*args, tmp_path / "out")
    assert "holds files; use --resume" in fail(capsys, *args, tmp_path / "out")
    os.symlink(tmp_path / "out", tmp_path / "link")
    assert "is a link" in fail(capsys, *args, tmp_path / "link")
    run(*args, tmp_path / "link", "--force")
    assert (tmp_path / "link").is_dir() and not (tmp_path / "link").is_symlink()
    assert "needs ground truth" in fail(capsys, "audit", model, data, "-m", "saliency", "--metric", "pointing_game",
                                        "-o", tmp_path / "o4")
    (data / "cats").mkdir()
    _image(data / "cats" / "x.png", 9)
    assert "class folder 'cats' names no class of the model" in fail(capsys, *args, tmp_path / "o2")
    for text, message in (("d.png,0,1,2\n", "line 1: 4 fields"), ("path,label\nnot_there.png,0\n", "file not found"),
                          ("path,label\n../m.onnx,0\n", "outside the CSV's folder"),
                          ("path,label,x1,y1,x2,y2\nd.png,0,5,0,1,4\n", "must have x1 < x2"),
                          ("path,label\nd.png,dog\n", "label 'dog' names no class of the model"),
                          ("x/y.png,0\nx__Y.png,0\n", "x__Y.png and x/y.png would share the id x__Y.png"),
                          ("path,label\n", "lists no images"), ("", "lists no images")):
        for name in ("d.png", "x/y.png", "x__Y.png"):
            _image(tmp_path / "csvdir" / name, 0)
        csv = tmp_path / "csvdir" / "d.csv"
        csv.write_text(text)
        assert message in fail(capsys, "audit", model, csv, "-m", "saliency", "-o", tmp_path / "o3")


def test_a_metric_explaining_again_past_the_budget_is_not_run_and_says_why(classes, tmp_path, monkeypatch):
    from onnxplain.metrics import Metric
    model, data = classes
    m = onnxplain.load(model, device="cpu")

    def again(case, times=1):  # the distance between the case's maps and `times` maps explained again
        return [np.abs(case.explain(case.model, case.inputs, case.targets) - case.maps).max(axis=(1, 2))
                for _ in range(times)][-1]
    monkeypatch.setitem(REGISTRY, "again", Metric("again", "robustness", "lower", "a test", again, needs=("explain",)))
    rows = audit_batch(m, read_data(m, data).records, Plan({"saliency": {}}, {"again": {}}, reexplain_passes=1))
    assert [r["metrics"]["again"] for r in rows] == [0.0] * 5  # explained again: the same maps
    rows = audit_batch(m, read_data(m, data).records, Plan({"saliency": {}}, {"again": {"times": 2}},
                                                           reexplain_passes=1))
    assert all(r["metrics"]["again"] is None for r in rows)
    assert rows[0]["metric_errors"]["again"] == ("not run: explaining again with saliency (1 model passes per image) "
                                                 "would take it past 1 model passes per image (raise "
                                                 "--reexplain-passes to run it)")


def test_the_sanity_section_is_the_randomisation_checks_on_the_first_images(classes, tmp_path):
    model, data = classes
    m = onnxplain.load(model, device="cpu")
    results = onnxplain.audit(m, data, ["saliency", "gradcam"], tmp_path / "out", metrics=["mprt", "random_logit"],
                              sanity_images=3, reexplain_passes=1)  # saliency: 1 pass per image: 1 layer of 2
    records = read_data(m, data).records[:3]
    x, labels = onnxplain.prepare_images(m, [r.file for r in records]), [r.label for r in records]
    e = onnxplain.explain(m, x, "saliency", target=labels)
    case = Case(m, x, e.maps, e.targets,
                explain=lambda m_, x_, t_: onnxplain.explain(m_, x_, "saliency", target=t_).maps)
    mprt, logit = CHECKS["mprt"](case, layers=1), CHECKS["random_logit"](case)
    got = results["sanity"]["saliency"]
    assert got["mprt"]["layers"] == mprt["layers"] and len(mprt["layers"]) == 1
    np.testing.assert_allclose(got["mprt"]["spearman"], mprt["spearman"], rtol=1e-9)
    assert got["mprt"]["verdict"] == mprt["verdict"] and got["random_logit"]["ssim"] == pytest.approx(logit["ssim"])
    assert "on the first 3 images" in results["sanity_note"]
    rows = read_rows(tmp_path / "out")
    assert all(r["metrics"]["mprt"] is not None for r in rows if r["method"] == "saliency")  # gradcam: some constant maps


def test_max_sensitivity_runs_with_the_audits_20_samples_unless_told(classes, tmp_path):
    model, data = classes
    m = onnxplain.load(model, device="cpu")
    records = read_data(m, data).records
    x = onnxplain.prepare_images(m, [r.file for r in records])
    e = onnxplain.explain(m, x, "saliency", target=np.array([r.label for r in records]))
    case = Case(m, x, e.maps, e.targets, explain=lambda model, inputs, targets: onnxplain.explain(
        model, inputs, "saliency", target=targets).maps)
    for given, samples in (({}, 20), ({"max_sensitivity": {"samples": 3}}, 3)):
        out = tmp_path / f"out{samples}"
        results = onnxplain.audit(m, data, ["saliency"], out, metrics=["max_sensitivity"], options=given)
        assert results["metrics"]["max_sensitivity"]["options"] == {"samples": samples}
        np.testing.assert_allclose([r["metrics"]["max_sensitivity"] for r in read_rows(out)],
                                   REGISTRY["max_sensitivity"](case, samples=samples), rtol=1e-5)


def _scored_by(fc: np.ndarray, bias: np.ndarray | None = None) -> onnx.ModelProto:
    """The tiny CNN with its classifier's weights replaced by `fc` (10×256), and a bias added."""
    proto = tiny_cnn()
    for init in proto.graph.initializer:
        if init.name == "fc":
            init.CopyFrom(onnx.numpy_helper.from_array(fc.astype(np.float32), "fc"))
    if bias is not None:
        proto.graph.initializer.append(onnx.numpy_helper.from_array(bias.astype(np.float32), "bias"))
        next(n for n in proto.graph.node if n.op_type == "Gemm").input.append("bias")
    return proto


def test_scores_that_ignore_the_class_or_the_image_are_said_once_and_recorded(tmp_path, capsys):
    from onnxplain.explain import constant_scores
    fc = next(onnx.numpy_helper.to_array(i) for i in tiny_cnn().graph.initializer if i.name == "fc")
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)
    found = {}
    for name, proto in (("trained", tiny_cnn()), ("one row", _scored_by(np.repeat(fc[:1], 10, axis=0))),
                        ("bias only", _scored_by(np.zeros_like(fc), np.arange(10.0))),
                        ("nothing", _scored_by(np.zeros_like(fc)))):
        onnx.save(proto, tmp_path / f"{name}.onnx")
        m = onnxplain.load(tmp_path / f"{name}.onnx", device="cpu", preprocessing={"scale": 1 / 255})
        scores = forward(m, x).astype(np.float64)
        found[name] = constant_scores(m, x, scores)
        spread = (np.ptp(scores, axis=1).max(), np.abs(scores - scores[:1]).max())
        assert (spread[0] > 0.1) == (name in ("trained", "bias only")), (name, spread)  # what the models are
        assert (spread[1] > 0.1) == (name in ("trained", "one row")), (name, spread)
    assert found["trained"] is None
    assert "depend on the class, so its maps" in found["one row"]
    assert "depend on the image, so its maps" in found["bias only"]
    assert "depend on the class or the image" in found["nothing"]
    assert "check its preprocessing (--preset" in found["nothing"] and "placeholders" in found["nothing"]
    one = tmp_path / "one row.onnx"
    twice = x[:1].repeat(2, 0)  # the same image twice scores the same: no alarm
    assert constant_scores(onnxplain.load(one, device="cpu"), twice, np.tile(np.arange(10.0), (2, 1))) is None

    with pytest.warns(UserWarning, match="do not depend on the class") as caught:
        onnxplain.explain(onnxplain.load(one, device="cpu", preprocessing={"scale": 1 / 255}), x, "saliency")
    assert len(caught) == 1
    data = tmp_path / "data"
    for i in range(3):
        _image(data / f"{i}.png", i)
    (tmp_path / "nothing.onnx").rename(tmp_path / "m.onnx")  # no sidecar: the preprocessing is guessed
    main(["audit", str(tmp_path / "m.onnx"), str(data), "-m", "saliency", "-m", "gradcam", "--metric", "sparseness",
          "--batch-size", "2", "-o", str(tmp_path / "out")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(err) == 1 and len(results["warnings"]) == 1 and err[0] == "warning: " + results["warnings"][0]
    assert "preprocessing, which was guessed (give --preset or --mean/--std/--scale" in err[0]
    page = (tmp_path / "out" / "report.html").read_text()
    banner = '<p class="alert" role="alert"><span class="badge warn">⚠ warning</span> '
    assert banner + escape(results["warnings"][0]) in page


def test_the_bundled_model_raises_no_alarm(audited, recwarn):
    _, results = audited
    assert results["warnings"] == []
    e = onnxplain.explain(onnxplain.load(MOBILENET, device="cpu"), IMAGES, "gradcam")
    assert not [w for w in recwarn if "do not depend" in str(w.message)] and len(e.maps) == 2


def test_drop_and_increase_share_one_forward_pass_of_the_explanation_images(classes, monkeypatch):
    from onnxplain import runtime
    from onnxplain.metrics import confidence
    model, data = classes
    m = onnxplain.load(model, device="cpu")
    records = read_data(m, data).records
    seen, run = [], runtime.Session.run

    def counting(self, outputs, feeds, batch_size=None):
        seen.append(max(len(v) for v in feeds.values()))
        return run(self, outputs, feeds, batch_size)
    monkeypatch.setattr(runtime.Session, "run", counting)

    def images_run(metrics):
        seen.clear()
        rows = audit_batch(m, records, Plan({"gradcam": {}}, metrics, batch_size=8))
        return sum(seen), rows
    n = len(records)
    none, _ = images_run({})
    one, _ = images_run({"drop": {}})
    both, rows = images_run({"drop": {}, "increase": {}})
    apart, _ = images_run({"drop": {}, "increase": {"baseline_kind": "blur"}})
    assert (one - none, both - none, apart - none) == (2 * n, 2 * n, 4 * n)  # the images, then their explanations
    x = onnxplain.prepare_images(m, [r.file for r in records])
    e = onnxplain.explain(m, x, "gradcam", target=[r.label for r in records])
    drop, increase = confidence(m, x, e.maps, e.targets)
    np.testing.assert_allclose([r["metrics"]["drop"] for r in rows], drop, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose([r["metrics"]["increase"] for r in rows], increase, rtol=0, atol=0)
    assert 0 < drop.mean() < 100


def _synthetic_rows(images: int, methods=("gradcam", "saliency"), seed=0) -> list[dict]:
    """Rows as an audit writes them: some images unreadable, some methods failing, metrics missing, values with many
    ties, labels missing; the second method's rows of the later half of the images come after all others (a resumed
    audit's order)."""
    rng = np.random.default_rng(seed)
    early, late = [], []
    for k in range(images):
        label = int(rng.integers(0, 5)) if rng.random() < 0.8 else None
        predicted = None if rng.random() < 0.03 else int(rng.integers(0, 5))
        for j, method in enumerate(methods):
            error = "cannot read image" if predicted is None else "too dark" if rng.random() < 0.05 else None
            values = {} if error else {n: None if rng.random() < 0.1 else float(rng.integers(0, 10)) / 10
                                       for n in ("deletion", "insertion", "sparseness")}
            row = {"id": f"c{k % 3}__{k}.png", "path": f"c{k % 3}/{k}.png", "label": label,
                   "label_name": None if label is None else f"class {label}", "predicted": predicted,
                   "predicted_name": None if predicted is None else f"class {predicted}",
                   "score": None if predicted is None else float(rng.random()), "target": predicted, "method": method,
                   "metrics": values, "metric_errors": {}, "map": None if error else f"maps/{k}/{method}.png",
                   "error": error, "seconds": float(rng.random())}
            (late if j and k >= images // 2 else early).append(row)
    return early + late


def test_the_summary_streamed_from_the_rows_equals_its_definitions(tmp_path):
    rows = _synthetic_rows(400)
    (tmp_path / "per_image.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics = {n: REGISTRY[n] for n in ("deletion", "insertion", "sparseness")}
    part = summarise(tmp_path, metrics, 3)
    read = [r for r in rows if r["predicted"] is not None]
    images = list({r["id"]: r for r in reversed(read)}.values())[::-1]   # first row per image
    labelled = [r for r in images if r["label"] is not None]
    assert part["accuracy"] == {"top1": np.mean([r["predicted"] == r["label"] for r in labelled]), "n": len(labelled)}
    assert part["failed"] == [{"path": r["path"], "reason": "cannot read image"}
                              for r in {r["id"]: r for r in rows if r["predicted"] is None}.values()]
    assert part["grid"] == [r["id"] for r in images[:8]] and len(part["failed"]) > 5
    for method in ("gradcam", "saliency"):
        own = [r for r in read if r["method"] == method]
        ok = [r for r in own if r["error"] is None]
        failed = len(own) - len(ok)
        assert part["methods"][method] == {"status": "ok", "seconds": pytest.approx(sum(r["seconds"] for r in own)),
                                           "reason": f"failed on {failed} of {len(own)} images: too dark"}
        for name in metrics:
            values = [r["metrics"][name] for r in ok if r["metrics"][name] is not None]
            mean, low, high = bootstrap(values, 3)
            assert part["summary"][method][name] == {"mean": mean, "low": low, "high": high, "n": len(values)}
        scored = sorted([(r["metrics"]["insertion"], r["id"]) for r in ok if r["metrics"]["insertion"] is not None],
                        key=lambda s: s[0], reverse=True)                # a stable sort: ties in row order
        ids = [i for _, i in scored]
        assert part["gallery"][method] == {"best": ids[:4], "worst": ids[::-1][:4]}
        for i in part["gallery"][method]["best"]:
            assert part["images"][i]["maps"][method] == next(r["map"] for r in own if r["id"] == i)
        for name, entry in part["per_class"].items():
            mine = [r for r in ok if (r["label_name"] if r["label"] is not None else r["predicted_name"]) == name]
            for metric in metrics:
                values = [r["metrics"][metric] for r in mine if r["metrics"][metric] is not None]
                assert entry[method][metric] == pytest.approx(np.mean(values), rel=1e-12)
    assert part["gallery"]["metric"] == "insertion" and len(part["per_class"]) == 5
