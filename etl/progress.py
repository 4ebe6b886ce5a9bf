"""One progress reporter: a rich display on a terminal, JSON-lines events otherwise (logs, CI)."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any, TextIO


class Task:
    def __init__(self, reporter: Reporter, name: str, total: float | None, unit: str) -> None:
        self.reporter = reporter
        self.name = name
        self.total = total
        self.unit = unit
        self.done = 0.0
        self.started = time.monotonic()
        self.fields: dict[str, Any] = {}
        self.sums: dict[str, float] = {}  # what `add` sums
        self._last_emit = 0.0
        self._lock = threading.Lock()
        self._rich_id: Any = None

    def advance(self, n: float = 1, add: dict[str, float] | None = None, **fields: Any) -> None:
        """Count `n` more done; `add` sums into fields shared by every worker (e.g. MB read)."""
        with self._lock:
            self.done += n
            self.fields.update(fields)
            for k, v in (add or {}).items():  # summed exactly (rounding each step drifts), rounded when shown
                self.sums[k] = self.sums.get(k, 0.0) + v
        self.reporter._update(self)

    def shown(self) -> dict[str, Any]:
        """The fields, with the sums to one decimal (+0.0, not -0.0, for a sum back at zero)."""
        with self._lock:
            return {**self.fields, **{k: round(v, 1) + 0.0 for k, v in self.sums.items()}}

    def update(self, **fields: Any) -> None:
        with self._lock:
            self.fields.update(fields)
        self.reporter._update(self)

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float | None:
        r = self.rate()
        if self.total is None or r <= 0:
            return None
        return max(0.0, (self.total - self.done) / r)

    def finish(self, **fields: Any) -> None:
        self.fields.update(fields)
        self.reporter._finish(self)


class Reporter:
    """`mode`: 'auto' (rich on a terminal, else JSON lines), 'rich', 'json' or 'quiet'."""

    def __init__(self, mode: str = "auto", stream: TextIO | None = None, interval: float = 1.0) -> None:
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "rich" if self.stream.isatty() else "json"
        self.mode = mode
        self.interval = interval
        self._lock = threading.Lock()
        self._progress: Any = None
        self._active = 0

    # ------------------------------------------------------------------ events
    def info(self, message: str, **fields: Any) -> None:
        if self.mode == "quiet":
            return
        if self.mode == "json":
            self._json({"event": "info", "message": message, **fields})
        else:
            from rich.console import Console

            console = self._progress.console if self._progress else Console(file=self.stream)
            console.print(message, highlight=False, markup=False)  # a "[source]" in a message is text

    def warn(self, message: str, **fields: Any) -> None:
        if self.mode == "json":
            self._json({"event": "warning", "message": message, **fields})
        elif self.mode != "quiet":
            from rich.console import Console
            from rich.text import Text

            console = self._progress.console if self._progress else Console(file=self.stream)
            console.print(Text.assemble(("warning: ", "yellow"), message), highlight=False)

    def task(self, name: str, total: float | None = None, unit: str = "items") -> Task:
        t = Task(self, name, total, unit)
        if self.mode == "rich":
            with self._lock:
                if self._progress is None:
                    from rich.progress import (
                        BarColumn,
                        Progress,
                        TaskProgressColumn,
                        TextColumn,
                        TimeElapsedColumn,
                        TimeRemainingColumn,
                    )

                    self._progress = Progress(
                        TextColumn("{task.description}"),
                        BarColumn(),
                        TaskProgressColumn(),  # the percentage, when the total is known
                        TextColumn("{task.fields[count]}"),
                        TextColumn("{task.fields[rate]}"),
                        TextColumn("{task.fields[extra]}"),
                        TimeElapsedColumn(),
                        TimeRemainingColumn(),
                        transient=False,
                    )
                    self._progress.start()
                self._active += 1
                t._rich_id = self._progress.add_task(name, total=total, count="", rate="", extra="")
        elif self.mode == "json":
            self._json({"event": "start", "task": name, "total": total, "unit": unit})
        return t

    # ------------------------------------------------------------------ internals
    def _extra(self, t: Task) -> str:
        return " ".join(f"{k}={v}" for k, v in t.shown().items())

    def _columns(self, t: Task) -> dict[str, str]:
        """The count and the rate in the task's own unit (a wait counted in seconds shows neither)."""
        if t.unit == "s":
            return {"count": "", "rate": ""}
        total = f"/{t.total:,.0f}" if t.total else ""
        return {"count": f"{t.done:,.0f}{total} {t.unit}", "rate": f"{t.rate():,.0f} {t.unit}/s"}

    def _update(self, t: Task) -> None:
        if self.mode == "rich" and self._progress is not None:
            self._progress.update(t._rich_id, completed=t.done, extra=self._extra(t), **self._columns(t))
        elif self.mode == "json":
            now = time.monotonic()
            if now - t._last_emit >= self.interval:
                t._last_emit = now
                self._json(self._state(t, "progress"))

    def _finish(self, t: Task) -> None:
        if self.mode == "rich" and self._progress is not None:
            self._progress.update(t._rich_id, completed=t.done, extra=self._extra(t), **self._columns(t))
            with self._lock:
                self._active -= 1
                if self._active == 0:
                    self._progress.stop()
                    self._progress = None
        elif self.mode == "json":
            self._json(self._state(t, "finish"))

    def _state(self, t: Task, event: str) -> dict[str, Any]:
        eta = t.eta()
        return {
            "event": event,
            "task": t.name,
            "done": round(t.done, 3),
            "total": t.total,
            "unit": t.unit,
            "percent": round(100 * t.done / t.total, 1) if t.total else None,
            "rate_per_s": round(t.rate(), 1),
            "elapsed_s": round(time.monotonic() - t.started, 1),
            "eta_s": None if eta is None else round(eta, 1),
            **t.shown(),
        }

    def _json(self, body: dict[str, Any]) -> None:
        line = json.dumps({"ts": round(time.time(), 3), **body}, default=str)
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()


QUIET = Reporter("quiet")
