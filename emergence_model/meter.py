"""The cost of a strategy's calls: wall time, and the most memory one call added.

Every strategy on a leaderboard is measured the same way, call by call (`measure`): the wall
time of the call, and its peak memory, the most resident memory (RSS) the process held during
the call above what it held when the call began. Before each call the C allocator returns the
memory it keeps free to the system (glibc's `malloc_trim`), so that a call's allocations show up
as new resident memory rather than reusing pages freed by an earlier call, and the kernel's
high-water mark of the process is reset (Linux: /proc/self/clear_refs), so that the mark read
after the call is this call's. Where either is missing (not Linux) peak memory is unknown (None).

Light on purpose (no torch): the harness's worker process imports it before a participant's
function, so that the worker's own imports are not counted against that function.
"""

from __future__ import annotations

import ctypes
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

STATUS_FILE = Path("/proc/self/status")
CLEAR_REFS_FILE = Path("/proc/self/clear_refs")
RESET_PEAK = "5"  # what clear_refs takes to reset the peak RSS (Linux 4.0 and later)
MB = 2**20


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none (macOS, musl)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def _status_bytes(field: str) -> int | None:
    """A "VmRSS:  1234 kB" line of /proc/self/status, in bytes; None without /proc."""
    try:
        for line in STATUS_FILE.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_peak() -> bool:
    """Reset the process's peak RSS to its current RSS; False where that is not possible."""
    try:
        CLEAR_REFS_FILE.write_text(RESET_PEAK)
    except OSError:
        return False
    return True


def measure(fn: Callable, *args) -> tuple[object, float, int | None]:
    """`fn(*args)` and what it cost: (its result, wall seconds, peak bytes added or None)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
    before = _status_bytes("VmRSS") if _reset_peak() else None
    start = time.perf_counter()
    result = fn(*args)
    seconds = time.perf_counter() - start
    peak = _status_bytes("VmHWM") if before is not None else None
    return result, seconds, None if peak is None else max(0, peak - before)


@dataclass
class Cost:
    """What a strategy's calls cost together: wall seconds, the prefixes they were given, how
    many calls, and the most memory any one call added (None: not measured)."""

    seconds: float = 0.0
    rows: int = 0
    calls: int = 0
    peak_bytes: int | None = 0

    def add(self, seconds: float, rows: int, peak_bytes: int | None) -> None:
        """Count one call of `rows` prefixes."""
        self.seconds += seconds
        self.rows += rows
        self.calls += 1
        self.peak_bytes = _larger(self.peak_bytes, peak_bytes)

    def merged(self, other: Cost) -> Cost:
        """Both costs as one (the parts of a cross-fit, scored apart)."""
        return Cost(
            self.seconds + other.seconds,
            self.rows + other.rows,
            self.calls + other.calls,
            _larger(self.peak_bytes, other.peak_bytes),
        )

    def summary(self) -> dict:
        """What a report shows: milliseconds per 100 prefixes (the challenge's batch), peak
        megabytes of one call (None: not measured), and the calls and prefixes behind them."""
        per_100 = 1000 * self.seconds / self.rows * 100 if self.rows else None
        peak = None if self.peak_bytes is None or not self.calls else self.peak_bytes / MB
        return {"ms_per_100": per_100, "peak_mb": peak, "calls": self.calls, "rows": self.rows}


def _larger(a: int | None, b: int | None) -> int | None:
    """The larger of two peaks; unknown if either is."""
    return None if a is None or b is None else max(a, b)
