"""Every benchmark, one after the other, in one command: `python benchmarks` (from the repository root).

Each script prints its own ratios, measured within its own run; this exits non-zero when any script reports a
ratio over its bound. `python benchmarks run scorecam` runs only the scripts named.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(names: list[str]) -> int:
    scripts = sorted(p for p in HERE.glob("*.py") if p.name != "__main__.py")
    chosen = [p for p in scripts if not names or p.stem in names]
    unknown = set(names) - {p.stem for p in scripts}
    if unknown:
        print(f"no benchmark named {', '.join(sorted(unknown))} (have: {', '.join(p.stem for p in scripts)})")
        return 2
    failed = []
    for script in chosen:
        print(f"\n=== {script.stem} ===", flush=True)
        if subprocess.run([sys.executable, str(script)], cwd=HERE.parent).returncode:
            failed.append(script.stem)
    print(f"\nover their bounds: {', '.join(failed)}" if failed else "\nevery benchmark within its bounds")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
