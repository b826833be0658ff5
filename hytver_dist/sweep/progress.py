"""The sweep's console: one compact progress line per event, Ray's own output in a log file,
and a short summary at the end.

By default everything Ray prints in the driver process (its logging, Tune's status tables, the
workers' forwarded output) goes to ``<results_dir>/logs/ray.log``; the console gets progress
lines such as ``[3:12] 6/14 done, 2 running, 0 failed | best val_dice 0.874 (hytver s1) |
~4:40 left``. ``--verbose`` leaves Ray's output on the console as well.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO


def clock(seconds: float) -> str:
    """``m:ss`` (or ``h:mm:ss``) of a duration; ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def estimate_left(elapsed: float, done: int, total: int) -> float:
    """Seconds left at the rate of the finished trials (NaN before the first one)."""
    if done <= 0:
        return math.nan
    return elapsed / done * max(0, total - done)


def format_progress(*, elapsed: float, done: int, running: int, failed: int, total: int,
                    best: float | None, best_label: str | None, metric: str) -> str:
    """One progress line. ``done`` counts finished trials including failed ones."""
    best_text = "n/a" if best is None else f"{best:.3f}" + (f" ({best_label})"
                                                             if best_label else "")
    return (f"[{clock(elapsed)}] {done}/{total} done, {running} running, {failed} failed | "
            f"best {metric} {best_text} | ~{clock(estimate_left(elapsed, done, total))} left")


class ProgressPrinter:
    """A ``ray.tune.Callback`` (built by :func:`make_callback`) that prints a line when a trial
    starts, finishes or fails, and at most every ``every`` seconds otherwise. ``out`` is a
    file descriptor (Tune pickles its callbacks, and open streams do not pickle)."""

    def __init__(self, total: int, metric: str, mode: str, out: int,
                 every: float = 30.0) -> None:
        self.total, self.metric, self.mode, self.out, self.every = total, metric, mode, out, every
        self.start = time.monotonic()
        # -inf, not 0: monotonic() counts from boot, so 0 would throttle the first line away on
        # a machine up for less than ``every`` seconds.
        self.last = -math.inf
        self.running: set[str] = set()
        self.done: set[str] = set()
        self.failed: set[str] = set()
        self.best: float | None = None
        self.best_label: str | None = None

    def line(self) -> str:
        return format_progress(elapsed=time.monotonic() - self.start, done=len(self.done),
                               running=len(self.running), failed=len(self.failed),
                               total=self.total, best=self.best, best_label=self.best_label,
                               metric=self.metric)

    def emit(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= self.every:
            self.last = now
            os.write(self.out, (self.line() + "\n").encode())

    def result(self, trial_id: str, label: str, value: Any) -> None:
        self.running.add(trial_id)
        if isinstance(value, (int, float)) and math.isfinite(value):
            better = self.best is None or (value > self.best if self.mode == "max"
                                           else value < self.best)
            if better:
                self.best, self.best_label = float(value), label
        self.emit()

    def finish(self, trial_id: str, failed: bool) -> None:
        self.running.discard(trial_id)
        self.done.add(trial_id)
        if failed:
            self.failed.add(trial_id)
        self.emit(force=True)


def make_callback(total: int, metric: str, mode: str, out: int) -> Any:
    """A Tune callback driving a :class:`ProgressPrinter` (Ray imported here only)."""
    from ray.tune import Callback

    from .search import trial_spec

    def label(trial: Any, result: dict) -> str:
        """The arm and the seed the result is from (a trial may train several seeds)."""
        spec = trial_spec(trial.config)
        return f"{spec.arm_id} s{result.get('seed', spec.seed_label)}"

    class _Progress(Callback):
        def __init__(self) -> None:
            self.printer = ProgressPrinter(total, metric, mode, out)

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.printer.running.add(trial.trial_id)

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                            **info: Any) -> None:
            self.printer.result(trial.trial_id, label(trial, result), result.get(metric))

        def on_trial_complete(self, iteration: int, trials: list, trial: Any,
                              **info: Any) -> None:
            self.printer.finish(trial.trial_id, failed=False)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.printer.finish(trial.trial_id, failed=True)

    return _Progress()


@contextlib.contextmanager
def ray_output_to(log_path: Path, verbose: bool) -> Iterator[TextIO]:
    """Redirect this process's stdout/stderr (file descriptors 1 and 2, where Ray's logging
    and the forwarded worker output land) to ``log_path``; yields a stream that still reaches
    the console. With ``verbose`` nothing is redirected."""
    if verbose:
        yield sys.stdout
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    console = os.fdopen(os.dup(1), "w", buffering=1)
    with open(log_path, "a", buffering=1) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield console
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            console.close()


def final_summary(statuses: list[dict[str, Any]], summary_path: Path | None,
                  table1_csv: Path | None, top: int = 5) -> str:
    """The end-of-sweep text: failures with their first error line, the report's path and the
    top rows of Table I (mean test Dice with its interval)."""
    lines = []
    bad = [s for s in statuses if s.get("status") not in (None, "ok")]
    if bad:
        lines.append(f"{len(bad)} trial(s) not ok:")
        for s in bad:
            first = str(s.get("error") or "").strip().splitlines()
            lines.append(f"  {s.get('trial')}: {s.get('status')}: {first[0] if first else ''}")
    if summary_path is not None:
        lines.append(f"report: {summary_path}")
    if table1_csv is not None and table1_csv.is_file():
        import pandas as pd

        from ..report.build import CLASS_COLUMN, MEAN_CLASS

        t1 = pd.read_csv(table1_csv)
        what = "mean test Dice"
        if CLASS_COLUMN in t1.columns:  # several classes: their mean
            t1, what = t1[t1[CLASS_COLUMN] == MEAN_CLASS], f"{what} over foreground classes"
        dice = t1[t1["metric"] == "dice"].sort_values("mean", ascending=False).head(top)
        lines.append(f"Table I, top {len(dice)} by {what} [interval]:")
        for row in dice.itertuples(index=False):
            lines.append(f"  {row.method:<26} {row.mean:.3f} [{row.ci_low:.3f}, "
                         f"{row.ci_high:.3f}]")
    return "\n".join(lines)


__all__ = ["ProgressPrinter", "clock", "estimate_left", "final_summary", "format_progress",
           "make_callback", "ray_output_to"]
