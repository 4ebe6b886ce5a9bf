"""One progress reporter: a rich display on a terminal, JSON-lines events otherwise (logs, CI).

A task's fields are shown as words with their units on a terminal ("923 WCU/s of 1,000 budget, 64 in flight"),
raw in JSON events. Fields named `*_per_s` are rates of the moment: at the end of a task they say nothing (a
finished load writes nothing), so the final line shows the task's average rate instead, and a rate summed
from workers' changes is never shown below zero.
"""

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
        self.summed: set[str] = set()  # fields summed from workers' changes (`advance(add=...)`)
        self._last_emit = 0.0
        self._lock = threading.Lock()
        self._rich_id: Any = None

    def advance(self, n: float = 1, add: dict[str, float] | None = None, **fields: Any) -> None:
        """Count `n` more done; `add` sums into fields shared by every worker (e.g. MB read)."""
        with self._lock:
            self.done += n
            self.fields.update(fields)
            for k, v in (add or {}).items():  # summed exactly; rounded where shown
                self.fields[k] = self.fields.get(k, 0) + v
                self.summed.add(k)
        self.reporter._update(self)

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


# how a field is said on a terminal: a format of its value (a few fields are said together, see `readable`)
LABELS = {
    "wcu_per_s": "{:,.0f} WCU/s",
    "rcu_per_s": "{:,.0f} RCU/s",
    "in_flight": "{:,} in flight",
    "rtt_ms": "round trip {:,} ms",
    "limited_by": "limited by {}",
    "MB": "{:,.1f} MB read",
    "state": "{}",
    "elapsed_s": "{:,}s",
    "items": "{:,} items",
}


def _rate(value: Any) -> Any:
    """A rate summed from workers' changes (-0.0, -0.1 from rounding) is never below zero."""
    return max(0.0, value) if isinstance(value, int | float) else value


def _shown(key: str, value: Any, summed: bool) -> Any:
    """A field's value in an event: a summed one to one decimal, a rate never below zero."""
    if summed and isinstance(value, float):
        value = round(value, 1) + 0.0  # + 0.0: no -0.0
    return _rate(value) if key.endswith("_per_s") else value


def readable(fields: dict[str, Any], final: bool = False) -> str:
    """A task's fields as words with their units; `final`: the rates of the moment left out."""
    shown = {k: v for k, v in fields.items() if v is not None and not (final and k.endswith("_per_s"))}
    parts = []
    budget = shown.pop("budget_wcu_per_s", None)
    if "wcu_per_s" in shown:
        rate = f"{_rate(shown.pop('wcu_per_s')):,.0f}"
        parts.append(f"{rate} of {budget:,.0f} WCU/s budget" if budget else f"{rate} WCU/s")
    elif budget:
        parts.append(f"budget {budget:,.0f} WCU/s")
    for k, v in shown.items():
        label = LABELS.get(k)
        value = _rate(v) if k.endswith("_per_s") else v
        try:
            parts.append(label.format(value) if label else f"{k.replace('_', ' ')} {value}")
        except (ValueError, TypeError):  # a value of another type than the label expects
            parts.append(f"{k.replace('_', ' ')} {value}")
    return ", ".join(parts)


class Reporter:
    """`mode`: 'auto' (rich on a terminal, else JSON lines), 'rich', 'json' or 'quiet'."""

    def __init__(self, mode: str = "auto", stream: TextIO | None = None, interval: float = 1.0) -> None:
        self._stream = stream
        if mode == "auto":
            mode = "rich" if self.stream.isatty() else "json"
        self.mode = mode
        self.interval = interval
        self._lock = threading.Lock()
        self._progress: Any = None
        self._active = 0

    @property
    def stream(self) -> TextIO:
        """The stream given, else stderr as it is now (a reporter made at import outlives a redirection)."""
        return self._stream or sys.stderr

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

    def plan(self, text: str, **fields: Any) -> None:
        """What a command is about to do (destination, budget, estimate): shown in every mode, `quiet`
        included (it is not progress), as lines of text, or one JSON event with a list of lines."""
        lines = text.splitlines()
        if self.mode == "json":
            self._json({"event": "plan", "lines": lines, **fields})
        elif self.mode == "rich":
            from rich.console import Console

            console = self._progress.console if self._progress else Console(file=self.stream)
            console.print(text, highlight=False, markup=False)
        else:
            with self._lock:
                self.stream.write("".join(line + "\n" for line in lines))
                self.stream.flush()

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
                    from rich.console import Console
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
                        console=Console(file=self.stream),  # progress goes to stderr, never into stdout's result
                    )
                    self._progress.start()
                self._active += 1
                t._rich_id = self._progress.add_task(name, total=total, count="", rate="", extra="")
        elif self.mode == "json":
            self._json({"event": "start", "task": name, "total": total, "unit": unit})
        return t

    # ------------------------------------------------------------------ internals
    def _columns(self, t: Task, final: bool = False) -> dict[str, str]:
        """The count, the rate in the task's own unit (at the end: its average over the task) and the fields
        in words (a wait counted in seconds shows no count or rate)."""
        extra = readable(t.fields, final)
        if t.unit == "s":
            return {"count": "", "rate": "", "extra": extra}
        total = f"/{t.total:,.0f}" if t.total else ""
        rate = f"{t.rate():,.0f} {t.unit}/s" + (" on average" if final else "")
        return {"count": f"{t.done:,.0f}{total} {t.unit}", "rate": rate, "extra": extra}

    def _update(self, t: Task) -> None:
        if self.mode == "rich" and self._progress is not None:
            self._progress.update(t._rich_id, completed=t.done, **self._columns(t))
        elif self.mode == "json":
            now = time.monotonic()
            if now - t._last_emit >= self.interval:
                t._last_emit = now
                self._json(self._state(t, "progress"))

    def _finish(self, t: Task) -> None:
        if self.mode == "rich" and self._progress is not None:
            self._progress.update(t._rich_id, completed=t.done, **self._columns(t, final=True))
            with self._lock:
                self._active -= 1
                if self._active == 0:
                    self._progress.stop()
                    self._progress = None
        elif self.mode == "json":
            self._json(self._state(t, "finish"))

    def _state(self, t: Task, event: str) -> dict[str, Any]:
        """An event with the task's fields as they are (rates never below zero: at the end, a rate of the
        moment is 0; `rate_per_s` is the task's average)."""
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
            **{k: _shown(k, v, k in t.summed) for k, v in t.fields.items()},
        }

    def _json(self, body: dict[str, Any]) -> None:
        line = json.dumps({"ts": round(time.time(), 3), **body}, default=str)
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()


QUIET = Reporter("quiet")
