"""What a user scripts against: labels and class names as targets, --json on every command, the run manifest,
folders of images, output names, --skip-existing, method parameters and passes, reprs and the device choice."""
import hashlib
import json
import shutil
import warnings

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import IMAGES, MOBILENET, rel_err
from onnxplain_cli.main import cli
from test_cli import fail
from test_load import tiny_cnn

import onnxplain
from onnxplain import labels, runtime
from onnxplain.files import output_stems
from onnxplain.methods import DEFAULT, METHODS

IMAGENET = (MOBILENET.parent / "imagenet_classes.txt").read_text().splitlines()


def run(*args):
    """stdout of a command that must succeed (stderr kept apart: --json promises stdout holds the document only)."""
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)  # click ≥ 8.2: apart
    assert result.exit_code == 0, result.output + result.stderr
    return result.stdout, result.stderr


# -- labels and targets by name -------------------------------------------------------------------------------------
def test_labels_are_read_in_the_formats_exporters_write(tmp_path):
    ultralytics = "{0: 'FEMALE_GENITALIA_COVERED', 1: 'FACE_FEMALE', 2: 'BUTTOCKS_EXPOSED'}"  # nudenet's metadata
    assert labels.parse(ultralytics, "m") == ["FEMALE_GENITALIA_COVERED", "FACE_FEMALE", "BUTTOCKS_EXPOSED"]
    assert labels.parse("0\n90\n180\n270\n", "m") == ["0", "90", "180", "270"]  # PaddleClas' 'character'
    assert labels.parse('["a", "b"]', "m") == ["a", "b"] and labels.parse('{"1": "b", "0": "a"}', "m") == ["a", "b"]
    assert labels.from_metadata({"character": "0\n90\n180\n270"}, 5) is None  # counts differ: no class names
    assert labels.from_metadata({"names": "{0: 'x'}", "character": "p\nq"}, 2) == (["p", "q"], "character")
    with pytest.raises(onnxplain.OnnxplainError, match="class 1 has no name"):
        labels.parse('{"0": "a", "2": "c"}', "m")
    proto = tiny_cnn()
    onnx.helper.set_model_props(proto, {"names": str({i: f"n{i}" for i in range(10)})})
    m = onnxplain.load(proto, preprocessing="unit", device="cpu")
    assert m.labels == [f"n{i}" for i in range(10)] and m.labels_from == "metadata 'names'"
    (tmp_path / "l.json").write_text(json.dumps({str(i): f"j{i}" for i in range(10)}))
    (tmp_path / "l.txt").write_text("\n".join(f"t{i}" for i in range(10)) + "\n\n")
    assert onnxplain.load(proto, preprocessing="unit", labels=tmp_path / "l.json").labels[3] == "j3"
    assert onnxplain.load(proto, preprocessing="unit", labels=str(tmp_path / "l.txt")).labels[9] == "t9"
    (tmp_path / "short.txt").write_text("a\nb\n")
    with pytest.raises(onnxplain.OnnxplainError, match="10 classes but 2 labels"):
        onnxplain.load(proto, preprocessing="unit", labels=tmp_path / "short.txt")


def test_targets_by_name_resolve_to_the_right_class(mobilenet, capsys, tmp_path):
    assert [labels.resolve(n, IMAGENET) for n in ("tabby", "TABBY", "egypt", "tiger", "crane", " 281")] == \
        [281, 281, 285, 292, 517, 281]  # exact names win over longer ones that start alike (tiger, tiger cat)
    assert IMAGENET[281] == "tabby" and IMAGENET[285] == "Egyptian cat" and IMAGENET[292] == "tiger"
    by_name = onnxplain.explain(mobilenet, IMAGES, "gradcam", target=["tabby", "espresso"])
    by_number = onnxplain.explain(mobilenet, IMAGES, "gradcam", target=[281, 967])
    assert (by_name.targets == [281, 967]).all() and np.array_equal(by_name.maps, by_number.maps)
    err = fail(capsys, "explain", MOBILENET, IMAGES[0], "-t", "tig", "-o", tmp_path / "a")
    assert "ambiguous" in err and "tiger shark [3]" in err and "tiger cat [282]" in err
    assert "did you mean tabby [281]" in fail(capsys, "explain", MOBILENET, IMAGES[0], "-t", "tabbx", "-o", tmp_path)
    out, _ = run("explain", MOBILENET, IMAGES[0], "-t", "Egyptian,tabby", "-o", tmp_path / "b")
    assert "explained Egyptian cat [285]" in out and "explained tabby [281]" in out
    assert not (tmp_path / "a").exists()  # a refused run makes no folder


def test_a_guessed_preprocessing_is_said_once(tmp_path):
    onnx.save(tiny_cnn(), tmp_path / "t.onnx")
    assert onnxplain.load(tmp_path / "t.onnx").preprocessing_guessed
    _, err = run("inspect", tmp_path / "t.onnx")
    assert err.count("note: no preprocessing in t.json") == 1 and len(err.splitlines()) == 1
    assert not onnxplain.load(MOBILENET).preprocessing_guessed and run("inspect", MOBILENET)[1] == ""
    assert run("inspect", tmp_path / "t.onnx", "--preset", "unit")[1] == ""


# -- --json and the run manifest -------------------------------------------------------------------------------------
def test_explain_json_and_manifest_hold_what_the_api_computes(tmp_path, mobilenet):
    out, _ = run("explain", MOBILENET, *IMAGES, "-m", "ig", "-p", "steps=4", "-t", "tabby,espresso", "-o", tmp_path,
                 "--json", "-k", "2")
    doc = json.loads(out)  # the whole of stdout is one document
    e = onnxplain.explain(mobilenet, IMAGES, "ig", target=[[281, 967]], steps=4)
    for i, entry in enumerate(doc["images"]):
        assert entry["image"] == str(IMAGES[i]) and not entry["skipped"]
        probs = mobilenet.probabilities(e.logits[i].astype(np.float64))
        assert [t["class"] for t in entry["top"]] == list(np.argsort(-probs)[:2])
        assert np.allclose([t["p"] for t in entry["top"]], np.sort(probs)[::-1][:2], rtol=1e-5)
        for k, item in enumerate(entry["explained"]):
            assert (item["class"], item["label"]) == ((281, "tabby"), (967, "espresso"))[k]
            assert abs(item["score"] - e.scores[i, k]) <= 1e-5 * abs(e.scores[i, k])
            assert abs(item["by_products"]["completeness_gap"] - e.info["completeness_gap"][i, k]) < 1e-3
            assert rel_err(np.load(item["files"][1]), e.maps[i, k]) < 1e-5
    manifest = json.loads((tmp_path / "onnxplain-run.json").read_text())["runs"]
    assert len(manifest) == 1 and manifest[0] == doc
    assert doc["model"]["sha256"] == hashlib.sha256(MOBILENET.read_bytes()).hexdigest()
    assert doc["parameters"]["ig"]["steps"] == 4 and doc["parameters"]["ig"]["rule"] == "gausslegendre"
    assert doc["onnxruntime"] == onnxplain.runtime.ort.__version__ and doc["onnx"] == onnx.__version__
    assert doc["devices_used"] == ["cpu"] and doc["model"]["preprocessing"]["guessed"] is False
    assert doc["command"][:2] == ["onnxplain", "explain"] and "tabby,espresso" in doc["command"]
    run("explain", MOBILENET, IMAGES[0], "-m", "saliency", "-o", tmp_path)  # a second run is added to the record
    runs = json.loads((tmp_path / "onnxplain-run.json").read_text())["runs"]
    assert [r["methods"] for r in runs] == [["ig"], ["saliency"]]


def test_every_command_prints_one_json_document(tmp_path, mobilenet):
    inspected = json.loads(run("inspect", MOBILENET, "--json")[0])
    assert inspected["labels"] == mobilenet.labels and inspected["default_layer"] == "hardtanh_34"
    assert inspected["model"]["classes"] == 1000 and inspected["ops_without_rule"] == {}
    listed = json.loads(run("methods", "--json")[0])
    assert {d["name"] for d in listed} == set(METHODS)
    evaluated = json.loads(run("evaluate", MOBILENET, *IMAGES, "-m", "gradcam", "--metric", "drop", "-t",
                               "espresso", "--json")[0])
    api = onnxplain.evaluate(mobilenet, IMAGES, ["gradcam"], 967, metrics=["drop"])
    assert np.allclose([r["drop"] for r in evaluated["methods"]["gradcam"]["images"]], api["gradcam"]["drop"])
    exported = json.loads(run("export", MOBILENET, "-o", tmp_path / "g.onnx", "--json")[0])
    assert exported["sha256"] == hashlib.sha256((tmp_path / "g.onnx").read_bytes()).hexdigest()
    assert exported["outputs"][-3:] == ["attributions", "maps", "target_used"]


# -- folders, names, --skip-existing ---------------------------------------------------------------------------------
def test_a_folder_explains_as_its_sorted_images(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for image in IMAGES:
        shutil.copy(image, folder / image.name)
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub").mkdir()
    listed, err = run("explain", MOBILENET, folder, "-o", tmp_path / "a", "--json")
    assert "2 images, 2 other entries skipped" in err
    explicit, _ = run("explain", MOBILENET, *sorted(folder.glob("*.png")), "-o", tmp_path / "b", "--json")
    a, b = json.loads(listed)["images"], json.loads(explicit)["images"]
    assert [x["image"] for x in a] == [x["image"] for x in b] == [str(folder / i.name) for i in IMAGES]
    for x, y in zip(a, b):
        assert np.array_equal(np.load(x["explained"][0]["files"][1]), np.load(y["explained"][0]["files"][1]))
    pattern, _ = run("explain", MOBILENET, str(folder / "c*.png"), "-o", tmp_path / "c", "--json")
    assert [x["image"] for x in json.loads(pattern)["images"]] == [str(folder / "chelsea.png"),
                                                                   str(folder / "coffee.png")]


def test_output_names_do_not_collide(tmp_path):
    from PIL import Image
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
    Image.open(IMAGES[0]).save(tmp_path / "x" / "a.png")
    Image.open(IMAGES[0]).convert("RGB").save(tmp_path / "x" / "a.jpg")
    Image.open(IMAGES[1]).save(tmp_path / "y" / "a.png")
    Image.open(IMAGES[1]).save(tmp_path / "y" / "b.png")
    paths = [tmp_path / "x" / "a.png", tmp_path / "x" / "a.jpg", tmp_path / "y" / "a.png", tmp_path / "y" / "b.png"]
    assert output_stems(paths) == ["x__a.png", "a.jpg", "y__a.png", "b"]
    assert output_stems(paths[:2]) == ["a.png", "a.jpg"] and output_stems(paths[2:]) == ["a", "b"]
    run("explain", MOBILENET, *paths[:2], "-o", tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").glob("*.npy")) == ["a.jpg.gradcam.npy", "a.png.gradcam.npy"]


def test_skip_existing_computes_only_the_missing_images(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    for i, image in enumerate([*IMAGES, IMAGES[0]]):
        shutil.copy(image, folder / f"{i}.png")
    whole = json.loads(run("explain", MOBILENET, folder, "-m", "saliency", "-o", tmp_path / "whole", "--json")[0])
    out = tmp_path / "out"
    run("explain", MOBILENET, folder, "-m", "saliency", "-o", out)
    (out / "1.saliency.png").unlink()
    (out / "1.saliency.npy").unlink()  # as if the run had stopped before image 1
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("[02].*")}
    explained = []
    real = onnxplain.explain_images
    monkeypatch.setattr(onnxplain, "explain_images",
                        lambda m, x, methods, **kw: explained.append(list(x)) or real(m, x, methods, **kw))
    doc = json.loads(run("explain", MOBILENET, folder, "-m", "saliency", "-o", out, "--skip-existing", "--json")[0])
    assert explained == [[folder / "1.png"]] and [i["skipped"] for i in doc["images"]] == [True, False, True]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("[02].*")} == kept  # untouched
    for a, b in zip(doc["images"], whole["images"]):  # the skipped ones keep the record of the run that made them
        assert a["explained"][0]["class"] == b["explained"][0]["class"]
        assert np.array_equal(np.load(a["explained"][0]["files"][1]), np.load(b["explained"][0]["files"][1]))
    (out / "2.saliency.npy").unlink()  # only part of an image's files: recomputing it overwrites the rest
    assert "does not" in fail(capsys, "explain", MOBILENET, folder, "-m", "saliency", "-o", out, "--skip-existing")
    explained.clear()
    run("explain", MOBILENET, folder, "-m", "saliency", "-o", out, "--skip-existing", "--force")
    assert explained == [[folder / "2.png"]]
    assert "made by another run" in fail(capsys, "explain", MOBILENET, folder, "-m", "saliency", "-o", out,
                                         "--skip-existing", "--mean", "0", "0", "0")
    assert "made by another run" in fail(capsys, "explain", MOBILENET, folder, "-m", "saliency", "-o", out,
                                         "--skip-existing", "-t", "tabby")  # same file names, another class


def test_a_failed_run_leaves_no_folder(tmp_path, capsys):
    assert "no-such-layer" in fail(capsys, "explain", MOBILENET, IMAGES[0], "--layer", "no-such-layer", "-o",
                                   tmp_path / "new" / "out")
    assert not (tmp_path / "new").exists()


# -- methods, reprs, defaults, device --------------------------------------------------------------------------------
def test_methods_show_the_classes_parameters_and_count_model_passes(tmp_path):
    from dataclasses import fields
    listed = {d["name"]: d for d in json.loads(run("methods", "--json", "--size", 8, 8)[0])}
    for name, cls in METHODS.items():
        defaults = {f.name: f.default for f in fields(cls) if f.init and f.name != "progress"}
        assert listed[name]["parameters"] == {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()}
    assert listed["pda"]["parameters"]["window"] == 10 and not listed["pda"]["slow"]
    assert json.loads(run("methods", "pda", "--json")[0])[0]["model_passes"] == 215 ** 2 * 10 + 1
    assert "slow" in run("methods", "pda")[0]
    onnx.save(tiny_cnn(), tmp_path / "t.onnx")
    m = onnxplain.load(tmp_path / "t.onnx", preprocessing="unit", device="cpu")
    x = np.random.default_rng(0).random((1, 3, 8, 8), np.float32)
    for name, params in (("occlusion", {"window": 3, "stride": 2}), ("rise", {"masks": 37}),
                         ("lime", {"samples": 21}), ("pda", {"window": 2, "samples": 3}),
                         ("undesirable", {"window": 4, "stride": 2, "competitors": 2})):
        totals = []
        onnxplain.explain(m, x, name, progress=lambda done, total: totals.append(total), **params)
        assert METHODS[name](**params).model_passes((8, 8)) == totals[-1] + 1, name  # + the unperturbed image


def test_short_repr_and_one_default_method(mobilenet):
    text = repr(mobilenet)
    assert len(text) < 200 and "1000 classes, 1000 labels" in text and "tench" not in text
    assert DEFAULT == "gradcam" and onnxplain.explain(mobilenet, IMAGES[:1]).method == "gradcam"
    assert "[default: gradcam]" in run("explain", "--help")[0]


def test_no_gpu_visible_runs_on_the_cpu_without_a_warning(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    runtime.gpu_visible.cache_clear()
    try:
        assert not runtime.gpu_visible()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert runtime.Session(tiny_cnn(), "auto").device == "cpu"
    finally:
        runtime.gpu_visible.cache_clear()
    if runtime.CUDA in runtime.ort.get_available_providers() and not runtime.gpu_visible():
        monkeypatch.setattr(runtime, "gpu_visible", lambda: True)  # a GPU expected, but CUDA does not start
        with pytest.warns(UserWarning, match="could not start"):
            assert runtime.Session(tiny_cnn(), "auto").device == "cpu"
