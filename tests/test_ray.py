"""The Ray engine on a local Ray instance (two CPUs, one actor): the same results as the local engine, bitwise, an
actor killed mid-run replaced with nothing lost or duplicated, a run resumed from what it wrote, and one line when
Ray is missing or the address does not answer. Ray is in the test extra; these skip only where it cannot be
installed. One Ray instance serves the module (Ray's start takes seconds)."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import IMAGES, MOBILENET
from onnxplain_cli.main import cli

import onnxplain
from onnxplain.audit.results import read_rows

ray = pytest.importorskip("ray")

METHODS = ("gradcam", "saliency", "rise")
RISE = {"masks": 48}  # seeded: the same masks on every actor


@pytest.fixture(scope="module")
def cluster():
    # the workers import this module's classes (KillFirst) as the driver does
    ray.init(num_cpus=2, object_store_memory=200 * 2**20, logging_level="ERROR", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([os.path.dirname(__file__),
                                                                      os.environ.get("PYTHONPATH", "")])}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Seven different photos (crops and mirror images of the bundled two): batches of 3, 3 and 1."""
    from PIL import Image
    folder = tmp_path_factory.mktemp("photos")
    for i in range(7):
        image = Image.open(IMAGES[i % 2]).convert("RGB")
        w, h = image.size
        image = image.crop((i * 9, i * 5, w - i * 7, h - i * 3))
        (image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if i % 3 else image).save(folder / f"{i}.png")
    return sorted(folder.glob("*.png"))


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads(result.stdout)


def test_ray_gives_the_local_results_bitwise(cluster, mobilenet, photos):
    chosen = [onnxplain.methods.get(m, **(RISE if m == "rise" else {})) for m in METHODS]
    local = list(onnxplain.explain_images(mobilenet, photos, chosen, batch_size=3))
    far = list(onnxplain.explain_images(mobilenet, photos, chosen, batch_size=3, engine="ray"))
    assert [c for c, _ in far] == [c for c, _ in local] and len(far) == 3
    for (_, ours), (_, theirs) in zip(far, local):
        for a, b in zip(ours, theirs):
            assert a.method == b.method and a.model is mobilenet
            for field in ("attributions", "maps", "targets", "scores", "logits"):
                assert np.array_equal(getattr(a, field), getattr(b, field)), (a.method, field)


def test_cli_ray_writes_the_local_files_and_manifest(cluster, photos, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths, from another folder than the Ray workers'
    args = ["explain", MOBILENET, *(os.path.relpath(p) for p in photos), *[f for m in METHODS for f in ("-m", m)],
            "-p", "masks=48", "--batch-size", "3", "--json"]
    local = run(*args, "-o", "local")
    far = run(*args, "-o", "ray", "--ray")
    assert far["ray"] == "local" and local["ray"] is None
    for a, b in zip(far["images"], local["images"], strict=True):
        assert a["top"] == b["top"] and not a["skipped"]
        for x, y in zip(a["explained"], b["explained"], strict=True):
            assert {k: v for k, v in x.items() if k != "files"} == {k: v for k, v in y.items() if k != "files"}
            ours, theirs = (tmp_path / "ray" / os.path.basename(f) for f in x["files"]), map(str, y["files"])
            for f, g in zip(ours, theirs):
                assert np.array_equal(np.load(f), np.load(g)) if f.suffix == ".npy" else f.stat().st_size > 0
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == sorted(p.name for p in (tmp_path / "local").iterdir())


class KillFirst:
    """A batch step that kills its own actor (SIGKILL, as the OOM killer or a lost node would) the first time it
    runs, after writing the batch's files: the batch is retried on the restarted actor."""

    def __init__(self, folder):
        self.folder = folder

    def __call__(self, model, first, found):
        for j, m in enumerate(found.maps):
            np.save(self.folder / f"{first + j}.npy", m)
        marker = self.folder / "killed"
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return first, os.getpid()


def test_a_killed_actor_is_replaced_and_its_batch_retried(cluster, mobilenet, photos, tmp_path):
    done = list(onnxplain.explain_images(mobilenet, photos, "gradcam", batch_size=3, engine="ray",
                                         then=KillFirst(tmp_path)))
    killed = int((tmp_path / "killed").read_text())
    assert [first for _, (first, _) in done] == [0, 3, 6]  # every batch once, in order
    assert killed not in {pid for _, (_, pid) in done}  # the killed actor's batch came from its successor
    assert sorted(p.name for p in tmp_path.glob("*.npy")) == sorted(f"{i}.npy" for i in range(7))
    local = np.concatenate([e.maps for _, e in onnxplain.explain_images(mobilenet, photos, "gradcam", batch_size=3)])
    assert all(np.array_equal(np.load(tmp_path / f"{i}.npy"), local[i]) for i in range(7))


def test_an_interrupted_ray_run_resumes_from_what_it_wrote(cluster, photos, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for p in photos:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "4.png").write_bytes(b"not a picture")  # the run stops at the second batch
    out = tmp_path / "out"
    args = ["explain", MOBILENET, folder, "-m", "gradcam", "--batch-size", "3", "-o", out, "--ray"]
    stopped = CliRunner().invoke(cli, list(map(str, args)))
    assert stopped.exit_code == 1 and str(stopped.exception).startswith("cannot read image")  # as a local run stops
    written = [(out / f"{i}.gradcam.npy").exists() for i in range(7)]  # the last batch may have run meanwhile
    assert written[:6] == [True] * 3 + [False] * 3
    (folder / "4.png").write_bytes(photos[4].read_bytes())
    doc = run(*args, "--skip-existing", "--json")
    assert [i["skipped"] for i in doc["images"]] == written
    whole = run("explain", MOBILENET, folder, "-m", "gradcam", "--batch-size", "3", "-o", tmp_path / "whole", "--json")
    assert len(list(out.glob("*.npy"))) == 7
    for a, b in zip(doc["images"], whole["images"], strict=True):
        assert np.array_equal(np.load(a["explained"][0]["files"][1]), np.load(b["explained"][0]["files"][1]))


def one_line(code: str, *args) -> str:
    """stderr of the command line run in a fresh Python after `code` (no Ray instance started by this module)."""
    done = subprocess.run([sys.executable, "-c", f"{code}\nfrom onnxplain_cli.main import main; main()", *map(str, args)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    return done.stderr.strip()


def test_ray_missing_or_unreachable_is_one_line(tmp_path):
    args = ["explain", MOBILENET, IMAGES[0], "-o", tmp_path / "out"]
    assert one_line("import sys; sys.modules['ray'] = None", *args, "--ray") == \
        "error: the Ray engine needs Ray: pip install 'onnxplain[ray]'"
    with socket_closed() as port:
        for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
            assert one_line("", *args, f"--ray={address}") == \
                f"error: cannot reach the Ray cluster at {address}: Connection refused"
    assert one_line("", *args, "--ray=nowhere") == \
        "error: a Ray address is auto, local, HOST:PORT or ray://HOST:PORT, not 'nowhere'"
    assert not (tmp_path / "out").exists()


class socket_closed:
    """A local port that nothing listens on."""

    def __enter__(self):
        import socket
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        return self.socket.getsockname()[1]

    def __exit__(self, *exc):
        self.socket.close()


def _my_actors() -> list[int]:
    """The process ids of this module's Ray actors (descendants of this process: other sessions may run Ray too)."""
    def parent(pid):
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if b"MapWorker(MapBatches(_Actor))" not in f.read():
                    continue
            pid = int(entry)
            while pid > 1 and pid != os.getpid():
                pid = parent(pid)
        except (OSError, ValueError):
            continue
        if pid == os.getpid():
            found.append(int(entry))
    return found


def test_ray_audit_equals_the_local_audit_and_survives_a_killed_actor(cluster, tmp_path):
    from test_audit import _image, _model
    data = tmp_path / "data"
    for i in range(40):
        _image(data / f"class{2 + i % 4}" / f"{i:02d}.png", i)
    model = _model(tmp_path)
    args = ["audit", model, data, "-m", "gradcam", "-m", "rise", "-p", "masks=1000", "--batch-size", "4", "--json",
            "--device", "cpu"]
    local = run(*args, "-o", tmp_path / "local")
    rows = tmp_path / "ray" / "per_image.jsonl"
    killed = []

    def kill_an_actor():  # SIGKILL the actor once the first batch's rows are in, with batches still to do
        while not killed:
            time.sleep(0.05)
            if rows.exists() and rows.stat().st_size and _my_actors():
                killed.append((_my_actors()[0], len(rows.read_text().splitlines())))
                os.kill(killed[0][0], signal.SIGKILL)
    killer = threading.Thread(target=kill_an_actor, daemon=True)
    killer.start()
    far = run(*args, "-o", tmp_path / "ray", "--ray")
    killer.join(1)
    assert killed and killed[0][1] < 80  # killed mid-run
    assert killed[0][0] not in _my_actors()  # replaced

    def same(results):
        return {**results, "created": None, "command": None,
                "methods": {m: {**v, "seconds": None} for m, v in results["methods"].items()}}
    assert same(far) == same(local)
    ours, theirs = (read_rows(tmp_path / name) for name in ("ray", "local"))
    assert len(ours) == 80 and len({(r["id"], r["method"]) for r in ours}) == 80  # nothing lost or duplicated
    assert [{**r, "seconds": 0} for r in ours] == [{**r, "seconds": 0} for r in theirs]
    maps, theirs = (sorted(p.relative_to(tmp_path / name) for p in (tmp_path / name / "maps").rglob("*")
                           if p.is_file()) for name in ("local", "ray"))
    assert maps == theirs and len(maps) == 40 * 5  # per image: its picture, and a picture and a map per method
    assert all((tmp_path / "ray" / p).read_bytes() == (tmp_path / "local" / p).read_bytes() for p in maps)


def test_an_interrupted_ray_audit_resumes_from_its_rows(cluster, tmp_path):
    from test_audit import _image, _model
    data = tmp_path / "data"
    for i in range(12):
        _image(data / f"class{2 + i % 3}" / f"{i:02d}.png", i)
    model = onnxplain.load(_model(tmp_path), device="cpu")
    common = dict(metrics=["deletion", "drop"], batch_size=4, engine="ray")
    whole = onnxplain.audit(model, data, ["gradcam"], tmp_path / "whole", **common)

    def stop(done, total):
        if done >= 4:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        onnxplain.audit(model, data, ["gradcam"], tmp_path / "cut", progress=stop, **common)
    assert len(read_rows(tmp_path / "cut")) == 4
    resumed = onnxplain.audit(model, data, ["gradcam"], tmp_path / "cut", resume=True, **common)
    assert [{**r, "seconds": 0} for r in read_rows(tmp_path / "cut")] == \
        [{**r, "seconds": 0} for r in read_rows(tmp_path / "whole")]
    assert resumed["summary"] == whole["summary"]
