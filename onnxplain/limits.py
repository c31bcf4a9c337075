"""Bounds on what a request may allocate or repeat, checked before the work starts: each refusal is one line naming
the parameter, its value and the limit."""
from __future__ import annotations

import math
import os

import numpy as np

from .errors import OnnxplainError

MAX_COUNT = 100_000  # steps, samples, masks, iterations: each costs at least one model pass per image
MAX_SIDE = 65_536    # pixels on a side of the model input or of an image after resize


def whole(name: str, value, least: int = 1, most: int | None = None) -> int:
    """`value` as an int in [least, most], or one line naming `name`, the value and the range."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not ok or value < least or (most is not None and value > most):
        span = f"from {least} to {most}" if most is not None else f"of at least {least}"
        raise OnnxplainError(f"{name} must be a whole number {span}, not {value!r}")
    return int(value)


def available_memory() -> int:
    """Bytes of memory available to a new allocation: MemAvailable where Linux gives it, else free physical pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 34


def gigabytes(n: float) -> str:
    return f"{n / 1e9:.3g} GB" if math.isfinite(n) else "unbounded memory"


def check_memory(what: str, nbytes: float, remedy: str) -> None:
    """Refuse `what` when it needs more than the memory available now."""
    free = available_memory()
    if nbytes > free:
        raise OnnxplainError(f"{what} would need {gigabytes(nbytes)}, more than the {gigabytes(free)} of memory "
                             f"available; {remedy}")
