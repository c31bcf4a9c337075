"""The command line through Click's runner, one real subprocess, and the exported explanation graph."""
import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from conftest import IMAGES, MOBILENET, rel_err
from onnxplain_cli.main import cli, main
from test_load import _quantised, _rounded, tiny_cnn

import onnxplain


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def fail(capsys, *args):
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code != 0 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_methods_lists_groups():
    out = run("methods")
    assert "gradients of the score:" in out and "saliency" in out and "gradcam" in out


def test_methods_names_say_what_every_parameter_of_every_method_means():
    described = json.loads(run("methods", "--json"))
    unexplained = [f"{d['name']}.{k}" for d in described for k, v in d["meanings"].items() if not v]
    assert not unexplained and sum(len(d["meanings"]) for d in described) > 100, unexplained
    out = run("methods", "lrp")
    assert "gamma=0.25: γ of the γ rule" in out and "composite='epsilon_plus_flat': rule set" in out
    assert "γ of the tanh" in run("methods", "layercam")  # a name meaning something else in another method


def test_inspect_shows_layers_and_preprocessing():
    out = run("inspect", MOBILENET)
    assert "input      input  NCHW  224x224" in out and "1000 names" in out
    assert "* hardtanh_34" in out and "every op between input and score has one" in out


def test_inspect_lists_the_ops_on_the_gradient_path_without_a_rule(tmp_path):
    for activations, expected in ((False, "every op between input and score has one"),
                                  (True, "QuantizeLinear: 1 node(s), e.g. 'q1'")):
        onnx.save(_quantised(tiny_cnn(), activations), tmp_path / "q.onnx")
        out = run("inspect", tmp_path / "q.onnx", "--preset", "unit", "--size", 8, 8, "--quantized", "exact")
        assert expected in out and "DequantizeLinear" not in out  # int8 weights fold; the activations' DQ is cut off


def test_inspect_and_explain_say_a_half_model_is_explained_in_float32(tmp_path, capsys):
    onnx.save(_rounded(tiny_cnn(), np.float16, io=True)[0], tmp_path / "h.onnx")
    main(["explain", str(tmp_path / "h.onnx"), str(IMAGES[0]), "--preset", "unit", "--device", "cpu", "-o",
          str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert err.startswith("warning: ") and "explained in float32" in err and len(err.splitlines()) == 1
    assert "precision  float16, explained in float32" in run("inspect", tmp_path / "h.onnx", "--preset", "unit")


def test_preprocessing_flags_override_the_preset_and_the_sidecar():
    zoo = MOBILENET.parent / "zoo" / "resnet_dynamo.onnx"
    out = run("inspect", zoo, "--preset", "imagenet-noresize", "--mean", "0.5", "0.5", "0.5", "--channel-order", "BGR")
    assert "mean [0.5, 0.5, 0.5], std [0.229, 0.224, 0.225], BGR" in out
    out = run("inspect", MOBILENET, "--scale", "1", "--resize", "240")
    assert "resize 240 -> 224x224 bilinear, scale 1, mean [0.485, 0.456, 0.406]" in out


def test_explain_writes_overlays_and_refuses_to_overwrite(tmp_path, capsys):
    out = run("explain", MOBILENET, *IMAGES, "-m", "gradcam", "-o", tmp_path)
    assert "explained tabby [281]" in out or "tiger cat" in out or "Egyptian cat" in out
    png, npy = tmp_path / "chelsea.gradcam.png", tmp_path / "chelsea.gradcam.npy"
    assert png.stat().st_size > 10_000 and np.load(npy).shape == (224, 224)
    before = png.read_bytes()
    err = fail(capsys, "explain", MOBILENET, IMAGES[0], "-o", tmp_path)
    assert "exists" in err and "--force" in err and png.read_bytes() == before
    run("explain", MOBILENET, IMAGES[0], "-m", "saliency", "-t", "285", "-o", tmp_path)
    assert np.load(tmp_path / "chelsea.saliency.npy").shape == (224, 224)
    run("explain", MOBILENET, IMAGES[0], "-o", tmp_path, "--force")


def test_several_classes_per_image_write_one_map_each(tmp_path, capsys, mobilenet):
    out = run("explain", MOBILENET, *IMAGES, "-m", "gradcam", "-t", "281,967", "-o", tmp_path)
    assert out.count("explained") == 4 and "[967]" in out
    both = onnxplain.explain(mobilenet, IMAGES, "gradcam", target=[[281, 967]])
    for i, image in enumerate(IMAGES):
        for k, c in enumerate((281, 967)):
            single = onnxplain.explain(mobilenet, [image], "gradcam", target=c).maps[0]
            saved = np.load(tmp_path / f"{image.stem}.gradcam.{c}.npy")
            assert rel_err(saved, single) <= 1e-5 and rel_err(both.maps[i, k], single) <= 1e-5
    assert "same number" in fail(capsys, "explain", MOBILENET, *IMAGES, "-t", "1,2", "-t", "3", "-o", tmp_path / "b")
    assert "class given twice" in fail(capsys, "explain", MOBILENET, IMAGES[0], "-t", "1,1", "-o", tmp_path / "c")


def test_a_methods_by_products_are_printed_per_image_and_class(tmp_path, mobilenet):
    out = run("explain", MOBILENET, IMAGES[0], "-m", "ig", "-p", "steps=8", "-t", "285,281", "-o", tmp_path)
    e = onnxplain.explain(mobilenet, IMAGES[:1], "ig", target=[[285, 281]], steps=8)
    gaps = [float(line.split("completeness gap ")[1].split(",")[0]) for line in out.splitlines() if "gap" in line]
    assert np.allclose(gaps, e.info["completeness_gap"][0], rtol=1e-3) and abs(gaps[0] - gaps[1]) > 1e-2


def test_bad_inputs_give_one_line(tmp_path, capsys):
    truncated = tmp_path / "t.onnx"
    truncated.write_bytes(MOBILENET.read_bytes()[:1000])
    assert "t.onnx" in fail(capsys, "inspect", truncated)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG not really")
    assert "cannot read image" in fail(capsys, "explain", MOBILENET, junk, "-o", tmp_path / "o")
    assert "unknown method" in fail(capsys, "explain", MOBILENET, IMAGES[0], "-m", "nope", "-o", tmp_path / "o")
    assert "2 targets for 1 images" in fail(capsys, "explain", MOBILENET, IMAGES[0], "-t", "1", "-t", "2",
                                            "-o", tmp_path / "o")
    (tmp_path / "plain").write_text("a file, not a folder")
    for command in (("explain", MOBILENET, IMAGES[0], "-o", tmp_path / "plain" / "o"),
                    ("export", MOBILENET, "-o", tmp_path / "plain" / "o" / "x.onnx")):
        assert "cannot write " + str(tmp_path / "plain") in fail(capsys, *command)


@pytest.mark.parametrize("method, params", [("saliency", {}), ("gradcam", {}), ("lrp", {"composite": "epsilon_gamma_box"})])
def test_exported_graph_runs_alone_and_matches_the_api(tmp_path, method, params, mobilenet):
    out = tmp_path / f"{method}.onnx"
    run("export", MOBILENET, "-m", method, "-o", out, *(f"-p{k}={v}" for k, v in params.items()))
    onnx.checker.check_model(onnx.load(out))
    x = np.stack([onnxplain.preprocess.read_image(p, mobilenet.preprocessing)[1] for p in IMAGES])
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    maps, used = sess.run(["maps", "target_used"], {"input": x})  # no target: top-1 in the graph
    e = onnxplain.explain(mobilenet, x, method, **params)
    assert (used == e.targets).all() and rel_err(maps, e.maps) < 1e-5
    maps, used = sess.run(["maps", "target_used"], {"input": x, "target": np.array([285, 504])})
    e = onnxplain.explain(mobilenet, x, method, target=[285, 504], **params)
    assert (used == [285, 504]).all() and rel_err(maps, e.maps) < 1e-5


def test_console_script_in_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "from onnxplain_cli.main import main; main()", "explain",
                           str(MOBILENET), str(IMAGES[0]), "-o", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "chelsea.gradcam.png" in proc.stdout and (tmp_path / "chelsea.gradcam.png").exists()
