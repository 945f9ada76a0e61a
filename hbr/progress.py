"""Progress that works in a pipe: the one progress helper of every stage and of training.

On a terminal a stage shows a tqdm bar. Under `0_pipeline.sh` (output piped to `tee` and a
log file) a bar would write `\\r`-joined fragments into the log, and tqdm's own pipe mode
shows nothing until the end, so an hour-long stage 1 would be silent. There the helper
writes one plain line every HBR_PROGRESS_SECONDS (default 10) seconds instead:

    1_dcm2img: 1200/76000 sources (1.6 %), 35.2 sources/s, ETA 35 min 25 s

and, when it wrote any, one closing line with the total time. Training (hbr.training) uses
the same `Meter` for its lines within an epoch and its ETA for the whole training.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable, Iterable, Iterator, Optional, TextIO, TypeVar

INTERVAL_ENV = "HBR_PROGRESS_SECONDS"  # seconds between progress lines in a pipe (tests set it to 0)
DEFAULT_INTERVAL_S = 10.0

T = TypeVar("T")


def interval_s() -> float:
    """Seconds between progress lines: $HBR_PROGRESS_SECONDS, else 10 (a bad value counts as unset)."""
    try:
        value = float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL_S))
    except ValueError:
        return DEFAULT_INTERVAL_S
    return value if value >= 0 else DEFAULT_INTERVAL_S


def format_duration(seconds: float) -> str:
    """'42 s', '3 min 05 s' or '2 h 07 min': short enough for a log line, exact enough for an ETA."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Meter:
    """Counts work done of a total since a start, says when the next line is due, and
    formats done/total, rate and ETA. The rate counts only work done since the start
    (`initial` is work done by an earlier, resumed run)."""

    def __init__(self, total: int, initial: int = 0, interval: Optional[float] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.done, self.initial = total, initial, initial
        self.interval = interval_s() if interval is None else interval
        self.clock = clock
        self.start = self.last = clock()

    def update(self, n: int = 1) -> None:
        """Count `n` more units done."""
        self.done += n

    def due(self) -> bool:
        """True (and the clock restarted) when a line is due: `interval` seconds since the last."""
        now = self.clock()
        if now - self.last < self.interval:
            return False
        self.last = now
        return True

    def elapsed(self) -> float:
        """Seconds since the start."""
        return self.clock() - self.start

    def rate(self) -> Optional[float]:
        """Units per second since the start (None before any unit or any time)."""
        elapsed = self.elapsed()
        done = self.done - self.initial
        return done / elapsed if done > 0 and elapsed > 0 else None

    def eta_s(self) -> Optional[float]:
        """Seconds left at the rate so far (None when not known yet)."""
        rate = self.rate()
        return max(0.0, (self.total - self.done) / rate) if rate else None

    def text(self, unit: str) -> str:
        """'1200/76000 sources (1.6 %), 35.2 sources/s, ETA 35 min 25 s'."""
        share = f" ({100 * self.done / self.total:.1f} %)" if self.total else ""
        rate, eta = self.rate(), self.eta_s()
        speed = f", {rate:.3g} {unit}/s" if rate else ""
        left = f", ETA {format_duration(eta)}" if eta is not None else ""
        return f"{self.done}/{self.total} {unit}{share}{speed}{left}"


class LineProgress:
    """tqdm's update/close interface, written as one plain line per interval (for logs and pipes)."""

    def __init__(self, total: int, desc: str, unit: str, initial: int = 0, file: Optional[TextIO] = None,
                 interval: Optional[float] = None):
        self.meter = Meter(total, initial, interval)
        self.desc, self.unit, self.file = desc, unit, file
        self.lines = 0

    def _write(self, text: str) -> None:
        stream = self.file or sys.stderr
        # the stage's own lines go to stdout, which is block-buffered in a pipe: out first,
        # so the log keeps the order in which things happened
        sys.stdout.flush()
        stream.write(f"{self.desc}: {text}\n")
        stream.flush()
        self.lines += 1

    def update(self, n: int = 1) -> None:
        """Count `n` more units; write a line when one is due."""
        self.meter.update(n)
        if self.meter.due():
            self._write(self.meter.text(self.unit))

    def close(self) -> None:
        """One closing line with the total time, when progress lines were written (short runs stay quiet)."""
        if self.lines:
            m = self.meter
            self._write(f"{m.done}/{m.total} {self.unit} in {format_duration(m.elapsed())}")
            self.lines = 0

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _NoProgress:
    """Progress switched off: counts nothing, writes nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "_NoProgress":
        return self

    def __exit__(self, *exc) -> None:
        pass


def progress(total: int, desc: str, unit: str, initial: int = 0, file: Optional[TextIO] = None,
             enabled: bool = True):
    """A progress counter with `update(n)` and `close()`, usable as a context manager: a tqdm
    bar when `file` (default stderr) is a terminal, else plain lines at an interval."""
    stream = file or sys.stderr
    if not enabled or total <= 0:
        return _NoProgress()
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=stream)
    return LineProgress(total, desc, unit, initial, file)


def track(items: Iterable[T], total: int, desc: str, unit: str, enabled: bool = True) -> Iterator[T]:
    """The items of `items`, counted by `progress` as they are consumed."""
    with progress(total, desc, unit, enabled=enabled) as bar:
        for item in items:
            yield item
            bar.update(1)
