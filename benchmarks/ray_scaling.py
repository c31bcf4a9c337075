"""Ray scaling, measured in one run: `python benchmarks/ray_scaling.py [--images 48] [--method gradcam]`.

1. Per-image costs in this process, over a folder of --images files (copies and crops of the bundled photos):
   decoding (`read_photos`), the model (the per-batch step both engines run), writing the files as `onnxplain
   explain` writes them (overlay PNG and .npy), and the bytes a batch travels as between Ray's steps (the images
   read, pickled; the account sent back).
2. Throughput (images per second, files written) of the command line's path: the local engine (reading threads,
   this process), then the Ray engine with 1 and 2 actors on a local Ray instance, end to end (the actors' start,
   the model's copy to them and their sessions' first build included) and steady (from the end of the first batch
   to the end of the last, as the workers stamped them; the wait for the first is reported apart). Scaling efficiency: the steady images/s of 2 actors over 2 × 1 actor's; each
   beside the local engine's.
The local instance is given one logical CPU per actor plus the reading tasks' share (`READ_CPUS`) whatever the
machine has: on a 2-core machine 2 actors and the reading compete for the same cores, and that is what is measured.
"""
from __future__ import annotations

import argparse
import math
import pickle
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import onnxplain  # noqa: E402
from onnxplain.engines import ray as cluster  # noqa: E402
from onnxplain.explain import explain_batch, read_job  # noqa: E402
from onnxplain.render import file_names  # noqa: E402
from onnxplain_cli.main import _BatchFiles  # noqa: E402
from throughput import MODEL, make_folder  # noqa: E402


def writer(images: list[Path], out: Path, method: str) -> _BatchFiles:
    """The command line's batch writer for `images` into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    return _BatchFiles(images, [{method: file_names(out, p.stem, method, None)} for p in images], [],
                       [None] * len(images), False, 3, "original", None, Path.cwd())


def costs(m, images: list[Path], method, batch: int, out: Path) -> dict:
    """Seconds per image of decoding, the model step and the writing, and bytes per image between Ray's steps."""
    chosen = [onnxplain.methods.get(method)]
    write = writer(images, out, method)
    spent = {"decode": 0.0, "model": 0.0, "write": 0.0}
    sent = {"read": 0, "result": 0}
    for a in range(0, len(images), batch):
        t = time.perf_counter()
        job = read_job(m.preprocessing, (a, images[a:a + batch], None))
        spent["decode"] += time.perf_counter() - t
        t = time.perf_counter()
        found = explain_batch(m, job, chosen, None, batch, True)
        spent["model"] += time.perf_counter() - t
        t = time.perf_counter()
        account = write(m, a, found)
        spent["write"] += time.perf_counter() - t
        sent["read"] += len(pickle.dumps(job))
        sent["result"] += len(pickle.dumps(account))
    return {**{k: v / len(images) for k, v in spent.items()}, **{k: v / len(images) for k, v in sent.items()}}


@dataclass
class Stamped:
    """The writer, then the wall-clock time at which the batch was written (where it ran: a thread or an actor)."""
    write: _BatchFiles

    def __call__(self, model, first, found) -> float:
        self.write(model, first, found)
        return time.time()


def throughput(m, images, method, batch, out: Path, **engine) -> tuple[float, float, float]:
    """(end-to-end images/s, steady images/s, seconds to the first batch written) of explain_images with the
    command line's writer. Steady: the images after the first batch over the time from its end to the last batch's
    end, as the workers stamped them, which leaves out what a run pays once (the actors' start, the model's copy to
    them, their sessions' build) and how Ray Data buffers the results on their way back."""
    t = time.time()
    stamps = [s for _, s in onnxplain.explain_images(m, images, [onnxplain.methods.get(method)], batch_size=batch,
                                                     then=Stamped(writer(images, out, method)), **engine)]
    end = time.time()
    return len(images) / (end - t), (len(images) - batch) / (max(stamps) - min(stamps)), min(stamps) - t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    import ray
    m = onnxplain.load(MODEL, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        images = make_folder(args.images, Path(tmp))
        c = costs(m, images, args.method, args.batch_size, Path(tmp) / "costs")
        print(f"per image, this process, {args.method} at batch {args.batch_size}: decode {c['decode'] * 1e3:.1f} ms, "
              f"model {c['model'] * 1e3:.1f} ms, write {c['write'] * 1e3:.1f} ms; sent: read batch "
              f"{c['read'] / 1e3:.0f} kB, account {c['result'] / 1e3:.1f} kB")
        local = throughput(m, images, args.method, args.batch_size, Path(tmp) / "local")
        print(f"local engine: {local[0]:.2f} images/s end to end, {local[1]:.2f} steady, first batch written after "
              f"{local[2]:.1f} s")
        ray.init(num_cpus=math.ceil(max(args.actors) + cluster.READ_CPUS), logging_level="ERROR", log_to_driver=False)
        steady = {}
        for n in args.actors:
            end, steady[n], fixed = throughput(m, images, args.method, args.batch_size, Path(tmp) / f"ray{n}",
                                               engine="ray", actors=n)
            print(f"ray, {n} actor{'s' * (n > 1)}: {end:.2f} images/s end to end, {steady[n]:.2f} steady "
                  f"({steady[n] / local[1]:.2f}x the local engine's), first batch written after {fixed:.1f} s")
        for n in sorted(steady)[1:] if 1 in steady else []:
            print(f"scaling efficiency of {n} actors (steady, over {n}x 1 actor's): {steady[n] / (n * steady[1]):.2f}")
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
