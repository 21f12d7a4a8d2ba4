"""The one timer: call a function untimed a few times, then timed repeats; benchmarks, the engine
builder's --precision best and training's ONNX speed all measure with it."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["repeat_timed"]


def repeat_timed(
    fn: Callable[[], int], *, min_seconds: float = 1.0, repeats: int = 3, warmup: int = 1
) -> list[tuple[int, float]]:
    """Call fn (which returns how many items it processed) `warmup` times untimed, then `repeats` times
    for at least min_seconds each (min_seconds=0: one call per repeat). Returns (items, seconds) per repeat."""
    for _ in range(max(0, warmup)):
        fn()
    out = []
    for _ in range(max(1, repeats)):
        items = 0
        t0 = time.perf_counter()
        while True:
            items += fn()
            dt = time.perf_counter() - t0
            if dt >= min_seconds:
                break
        out.append((items, dt))
    return out
