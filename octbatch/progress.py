"""Progress on stderr: a rich bar on a terminal, periodic log lines otherwise (with -v), or nothing."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, Protocol

__all__ = ["make_reporter", "Reporter", "NullReporter", "RichReporter", "LineReporter"]


class Reporter(Protocol):
    """What the pipeline tells about progress (a reporter may also set `wants_total = True` to get a
    count of the pending files, made on a side thread)."""

    def start(self, what: str) -> None: ...
    def set_total(self, total: int) -> None: ...
    def advance(self, files: int, errors: int) -> None: ...
    def log(self, msg: str) -> None: ...
    def finish(self) -> None: ...


class NullReporter:
    """Reports nothing (Python callers, --quiet)."""

    def start(self, what: str) -> None:
        pass

    def set_total(self, total: int) -> None:
        pass

    def advance(self, files: int, errors: int) -> None:
        pass

    def log(self, msg: str) -> None:
        pass

    def finish(self) -> None:
        pass


class RichReporter:
    wants_total = True

    def __init__(self, console):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = console
        self._errors = 0
        self._files = 0
        self._t0 = time.perf_counter()
        self._lock = threading.Lock()
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} files/s"),
            TextColumn("[red]{task.fields[errors]} errors"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.task: Any = None  # rich's TaskID once started

    def start(self, what):
        self.progress.start()
        self.task = self.progress.add_task(what, total=None, rate="-", errors=0)
        self._t0 = time.perf_counter()

    def set_total(self, total):
        if self.task is not None:
            self.progress.update(self.task, total=total)

    def advance(self, files, errors):
        with self._lock:
            self._files += files
            self._errors += errors
            dt = time.perf_counter() - self._t0
            rate = f"{self._files / dt:,.0f}" if dt > 0 else "-"
            self.progress.update(self.task, advance=files, rate=rate, errors=self._errors)

    def log(self, msg):
        self.progress.console.log(msg)

    def finish(self):
        self.progress.stop()


class LineReporter:
    """For logs (stderr not a terminal) with -v: one line every `every` seconds."""

    wants_total = True

    def __init__(self, stream=sys.stderr, every: float = 10.0):
        self.stream = stream
        self.every = every
        self.total = None
        self.files = self.errors = 0
        self._last = self._t0 = time.perf_counter()

    def start(self, what):
        self._t0 = self._last = time.perf_counter()
        print(f"octbatch: {what}", file=self.stream, flush=True)

    def set_total(self, total):
        self.total = total
        print(f"octbatch: {total} file(s) to classify", file=self.stream, flush=True)

    def advance(self, files, errors):
        self.files += files
        self.errors += errors
        now = time.perf_counter()
        if now - self._last >= self.every:
            self._last = now
            rate = self.files / max(now - self._t0, 1e-9)
            eta = f", ETA {(self.total - self.files) / rate:.0f} s" if self.total and rate > 0 else ""
            print(
                f"octbatch: {self.files}/{self.total or '?'} files, {rate:,.0f} files/s, {self.errors} errors{eta}",
                file=self.stream,
                flush=True,
            )

    def log(self, msg):
        print(f"octbatch: {msg}", file=self.stream, flush=True)

    def finish(self):
        pass


def make_reporter(*, quiet: bool, verbose: int, no_progress: bool) -> Reporter:
    if quiet:
        return NullReporter()
    if not no_progress and sys.stderr.isatty():
        from rich.console import Console

        return RichReporter(Console(stderr=True))
    if verbose:
        return LineReporter()
    return NullReporter()
