"""Progress of a bench: a rich live display on a terminal, plain lines otherwise (logs, CI, pipes)."""

from __future__ import annotations

import sys
import time
from typing import Any, Protocol, TextIO


class Progress(Protocol):
    def start(self, done: dict[str, int], best: dict[str, float | None]) -> None:
        """The studies are open: `done` trials per method are already counted (a resumed run), `best` their best."""

    def trial_started(self, key: str, number: int, params: dict[str, Any], steps: int | None) -> None: ...

    def trial_event(self, key: str, number: int, event: dict[str, Any]) -> None: ...

    def trial_finished(self, key: str, number: int, status: str, metric: float | None, best: float | None) -> None: ...

    def message(self, text: str) -> None: ...

    def close(self) -> None: ...


def _params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _metric_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _done_text(done: dict[str, int], best: dict[str, float | None], trials: dict[str, int] | None) -> str:
    parts = []
    for key, count in done.items():
        total = f"/{trials[key]}" if trials and key in trials else ""
        value = best.get(key)
        parts.append(f"{key} {count}{total} done" + ("" if value is None else f" (best {_metric_text(value)})"))
    return ", ".join(parts)


class LineProgress:
    """One line per trial start and end, and at most one step line every `every_s` seconds."""

    def __init__(self, stream: TextIO | None = None, every_s: float = 30.0, trials: dict[str, int] | None = None) -> None:
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self.trials = trials
        self._last = 0.0

    def _print(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=self.stream, flush=True)

    def start(self, done: dict[str, int], best: dict[str, float | None]) -> None:
        if any(done.values()):  # a fresh run says nothing here
            self._print(f"resuming: {_done_text(done, best, self.trials)}")

    def trial_started(self, key: str, number: int, params: dict[str, Any], steps: int | None) -> None:
        self._last = time.monotonic()
        self._print(f"trial {key}-{number} started: {_params_text(params)}")

    def trial_event(self, key: str, number: int, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "eval":
            self._print(f"trial {key}-{number} step {event['step']}: eval loss {event['eval_loss']:.4f}")
        elif kind == "step" and time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            self._print(f"trial {key}-{number} step {event['step']}: loss {event['loss']:.4f}")

    def trial_finished(self, key: str, number: int, status: str, metric: float | None, best: float | None) -> None:
        self._print(f"trial {key}-{number} {status}: metric {_metric_text(metric)} (best {key}: {_metric_text(best)})")

    def message(self, text: str) -> None:
        self._print(text)

    def close(self) -> None:
        pass


class RichProgress:
    """A live display: the current trial's steps and phase, and the best metric so far per method.

    The display starts with `start()`, once the studies are open, so that a resumed run's first frame already
    shows the trials done and their best (never a bar at 0 that jumps); messages before it print as lines.
    """

    def __init__(self, methods: list[str], trials: dict[str, int]) -> None:
        from rich.console import Console, Group
        from rich.live import Live
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichBar
        from rich.table import Table

        self._table_cls, self._group_cls = Table, Group
        self.console = Console(stderr=True)
        self.bars = RichBar(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), console=self.console,
        )
        self.method_tasks = {m: self.bars.add_task(f"{m} trials", total=trials[m], info="") for m in methods}
        self.step_task = self.bars.add_task("steps", total=1, info="", visible=False)
        self.best: dict[str, float | None] = dict.fromkeys(methods)
        self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)
        self._started = False

    def _show(self) -> None:
        if not self._started:
            self._started = True
            self.live.update(self._render())
            self.live.start()

    def start(self, done: dict[str, int], best: dict[str, float | None]) -> None:
        for key, count in done.items():
            if key in self.method_tasks:
                self.bars.update(self.method_tasks[key], completed=count)
                self.best[key] = best.get(key)
        self._show()

    def _render(self) -> Any:
        table = self._table_cls(title="best so far", expand=False)
        table.add_column("method")
        table.add_column("best metric", justify="right")
        for method, value in self.best.items():
            table.add_row(method, _metric_text(value))
        return self._group_cls(self.bars, table)

    def trial_started(self, key: str, number: int, params: dict[str, Any], steps: int | None) -> None:
        self._show()
        self.bars.update(self.step_task, description=f"{key}-{number}", completed=0, total=steps or 1,
                         visible=True, info=_params_text(params)[:60])

    def trial_event(self, key: str, number: int, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "phase" and event.get("steps"):
            self.bars.update(self.step_task, total=event["steps"])
        if kind == "phase":
            self.bars.update(self.step_task, info=str(event.get("name", "")))
        elif kind == "step":
            self.bars.update(self.step_task, completed=event["step"], info=f"loss {event['loss']:.4f}")
        elif kind == "eval":
            self.bars.update(self.step_task, info=f"eval loss {event['eval_loss']:.4f}")

    def trial_finished(self, key: str, number: int, status: str, metric: float | None, best: float | None) -> None:
        self.best[key] = best
        if key in self.method_tasks:  # confirmation runs (<label>+confirm) have no bar of their own
            self.bars.advance(self.method_tasks[key])
        self.console.print(f"{key}-{number}: {status}, metric {_metric_text(metric)}")
        self.live.update(self._render())

    def message(self, text: str) -> None:
        self.console.print(text)

    def close(self) -> None:
        if self._started:
            self.live.stop()


def make_progress(methods: list[str], trials: dict[str, int], *, stream: TextIO | None = None) -> Progress:
    """Rich on an interactive terminal, lines otherwise."""
    out = stream or sys.stderr
    if out.isatty():
        return RichProgress(methods, trials)
    return LineProgress(out, trials=trials)
