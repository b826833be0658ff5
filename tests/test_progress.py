"""The sweep's console: progress lines, the estimate, output redirection and the end summary."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd

from hytver_dist.sweep.progress import (
    ProgressPrinter,
    clock,
    estimate_left,
    final_summary,
    format_progress,
)


def test_clock_and_estimate():
    assert clock(0) == "0:00" and clock(61.4) == "1:01" and clock(3725) == "1:02:05"
    assert clock(math.nan) == "?" and clock(-1) == "?"
    assert math.isnan(estimate_left(30.0, 0, 10))
    assert estimate_left(60.0, 3, 12) == 180.0  # 20 s per trial, 9 to go
    assert estimate_left(60.0, 12, 12) == 0.0


def test_format_progress():
    line = format_progress(elapsed=125, done=18, running=2, failed=1, total=42, best=0.87412,
                           best_label="hytver s1", metric="val_dice")
    assert line == ("[2:05] 18/42 done, 2 running, 1 failed | best val_dice 0.874 (hytver s1) "
                    "| ~2:47 left")
    first = format_progress(elapsed=3, done=0, running=2, failed=0, total=4, best=None,
                            best_label=None, metric="val_dice")
    assert first == "[0:03] 0/4 done, 2 running, 0 failed | best val_dice n/a | ~? left"


def test_printer_tracks_trials_and_the_best_score():
    r, w = os.pipe()
    printer = ProgressPrinter(total=3, metric="val_dice", mode="max", out=w, every=3600)
    printer.result("a", "dice s0", 0.5)   # first line is printed (last print is "never")
    printer.result("b", "ce s0", 0.7)     # throttled
    printer.result("a", "dice s0", 0.6)   # not better than 0.7
    printer.result("b", "ce s0", float("nan"))
    printer.finish("a", failed=False)
    printer.finish("b", failed=True)
    os.close(w)
    lines = os.read(r, 10000).decode().splitlines()
    os.close(r)
    assert len(lines) == 3
    assert "0/3 done, 1 running, 0 failed | best val_dice 0.500 (dice s0)" in lines[0]
    assert "1/3 done, 1 running, 0 failed | best val_dice 0.700 (ce s0)" in lines[1]
    assert "2/3 done, 0 running, 1 failed" in lines[2]
    low = ProgressPrinter(total=1, metric="val_loss", mode="min", out=1)
    low.result("a", "x", 0.3)
    low.result("b", "y", 0.2)
    assert (low.best, low.best_label) == (0.2, "y")


def test_first_line_prints_whatever_the_clock_origin(monkeypatch):
    # A machine booted a few seconds ago: monotonic() is small, far below ``every``.
    now = [2.0]
    monkeypatch.setattr("hytver_dist.sweep.progress.time.monotonic", lambda: now[0])
    r, w = os.pipe()
    printer = ProgressPrinter(total=2, metric="val_dice", mode="max", out=w, every=30.0)
    printer.result("a", "dice s0", 0.5)   # first line, at 2 s after boot
    now[0] = 10.0
    printer.result("a", "dice s0", 0.6)   # within 30 s of the first: throttled
    now[0] = 33.0
    printer.result("a", "dice s0", 0.7)   # 31 s later: printed
    os.close(w)
    lines = os.read(r, 10000).decode().splitlines()
    os.close(r)
    assert len(lines) == 2
    assert lines[0].startswith("[0:00]") and "best val_dice 0.500" in lines[0]
    assert lines[1].startswith("[0:31]") and "best val_dice 0.700" in lines[1]


def test_ray_output_goes_to_the_log_file(tmp_path):
    code = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        from hytver_dist.sweep.progress import ray_output_to
        with ray_output_to(Path({str(tmp_path / 'logs' / 'ray.log')!r}), False) as out:
            print("from ray", flush=True)
            os.write(2, b"worker stderr\\n")
            print("progress line", file=out, flush=True)
        print("after")
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, check=True)
    assert done.stdout == "progress line\nafter\n" and done.stderr == ""
    log = (tmp_path / "logs" / "ray.log").read_text()
    assert "from ray" in log and "worker stderr" in log and "progress" not in log


def test_final_summary(tmp_path):
    t1 = pd.DataFrame([
        {"method": m, "metric": metric, "mean": v, "ci_low": v - 0.1, "ci_high": v + 0.05}
        for m, v in [("dice", 0.8), ("ce", 0.6), ("hytver", 0.85)]
        for metric in ("dice", "hd95")])
    t1.to_csv(tmp_path / "table1.csv", index=False)
    statuses = [{"trial": "dice-seed0", "status": "ok"},
                {"trial": "focal-seed1", "status": "failed",
                 "error": "FloatingPointError: loss 'focal' is nan\nmore"}]
    text = final_summary(statuses, tmp_path / "summary.md", tmp_path / "table1.csv", top=2)
    assert text.splitlines() == [
        "1 trial(s) not ok:",
        "  focal-seed1: failed: FloatingPointError: loss 'focal' is nan",
        f"report: {tmp_path / 'summary.md'}",
        "Table I, top 2 by mean test Dice [interval]:",
        f"  {'hytver':<26} 0.850 [0.750, 0.900]",
        f"  {'dice':<26} 0.800 [0.700, 0.850]",
    ]
