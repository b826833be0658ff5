"""Driver deaths at chosen points of a trial's life, then ``--resume``.

Each sweep runs in a subprocess on its own embedded Ray (own ``RAY_TMPDIR``) whose driver
holds a Tune callback that signals the driver itself when a given trial reports a given
iteration: deterministic kill points, no sleeps. Two trials run one at a time (``dice`` then
``hytver``), 9 iterations, a validation and a checkpoint every 3.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_sweep_ray import (  # noqa: F401  (cache_dir, ray_env: module fixtures)
    ROOT,
    _cmdline,
    _pids_by,
    assert_report,
    cache_dir,
    kill_session,
    ray_env,
    results,
    sweep_dict,
    trial_statuses,
    tune_trials,
    wait_for,
)

ITERATIONS, EVERY = 9, 3
LINGERING = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")
# The driver: run_sweep with a callback that sends SIG to this process when the trial of LOSS
# reports iteration AT (a validation result, not the final one; AT "final": its final result,
# before Tune records the trial finished). SIG "none": never. The callback
# reads LOSS, AT and SIG from the environment when called, not when built: Tuner.restore brings
# back the callbacks pickled with the experiment, so a resumed run holds the first run's object.
DRIVER = """
import os, signal, sys
from ray import tune
from hytver_dist.sweep.config import SweepConfig
from hytver_dist.sweep import SweepInterrupted, run_sweep
config, cache, resume = sys.argv[1:4]

class Kill(tune.Callback):
    def on_trial_result(self, iteration, trials, trial, result, **info):
        loss, at, sig = os.environ["HF_KILL_AT"].split(":")
        final = bool(result.get("done_training"))
        hit = final if at == "final" else not final and result.get("iteration") == int(at)
        if sig != "none" and trial.config["arm"]["loss"] == loss and hit:
            os.kill(os.getpid(), getattr(signal, sig))

try:
    run_sweep(SweepConfig.load(config), cache_dir=cache, num_cpus=2, resume=resume == "1",
              callbacks=[Kill()], verbose=0)
except SweepInterrupted as exc:
    print(f"interrupted: {exc}")
    sys.exit(130)
"""


class Sweep:
    """One sweep's files and its driver runs."""

    def __init__(self, tmp_path: Path, cache: Path, name: str) -> None:
        self.storage = tmp_path / "storage"
        self.experiment = self.storage / name
        self.results_dir = self.experiment / "results"
        self.config = tmp_path / f"{name}.yaml"
        self.config.write_text(yaml.safe_dump(sweep_dict(
            name, self.storage, search={"losses": ["dice", "hytver"]},
            training={"iterations": ITERATIONS, "eval_every": EVERY,
                      "checkpoint_every": EVERY},
            resources={"max_concurrent_trials": 1})))
        self.cache = cache
        self.log = tmp_path / "driver.log"
        self.tmp = tempfile.mkdtemp(prefix="hf", dir="/tmp")  # short: Ray's socket paths
        self.sessions: list[int] = []

    def run(self, *, loss: str = "", at: int | str = 0, sig: str = "none", resume: bool = False,
            timeout: float = 240) -> int:
        """Run the driver to its end (or its kill); afterwards nothing of it may be left."""
        env = {**os.environ, "RAY_TMPDIR": self.tmp, "HF_KILL_AT": f"{loss}:{at}:{sig}"}
        proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(self.config), str(self.cache),
             "1" if resume else "0"],
            cwd=ROOT, env=env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
            start_new_session=True)
        self.sessions.append(proc.pid)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"driver did not end in {timeout:.0f} s:\n{self.tail()}")

        # The embedded Ray dies with its driver, even a SIGKILLed one (no clean shutdown):
        # GCS, raylet, workers. Ray 2.60's two agents outlive a SIGKILLed driver (they report
        # the raylet's death to the dead GCS first); they are left running, so the next run
        # shows they do not block a resume, and killed when the test ends.
        def only_agents() -> bool:
            left = [_cmdline(p) for p in _pids_by(3).get(proc.pid, [])]
            return all(c.startswith(LINGERING) for c in left)

        wait_for("the driver's Ray processes to exit", only_agents, 60, 0.2)
        return rc

    def tail(self) -> str:
        return self.log.read_text()[-4000:]

    def trial(self, loss: str) -> tuple[str, Path]:
        """(trial id, Tune trial directory) of the trial that trains ``loss``."""
        for tid, d in tune_trials(self.experiment).items():
            if json.loads((d / "params.json").read_text())["arm"]["loss"] == loss:
                return tid, d
        raise AssertionError(f"no {loss} trial in {self.experiment}")

    def checkpoint_iteration(self, trial_id: str) -> int | None:
        """Iteration of the trial's last checkpoint that Ray Train registered."""
        snap = self.storage / f"train-{trial_id}" / "checkpoint_manager_snapshot.json"
        latest = json.loads(snap.read_text()).get("latest_checkpoint_result")
        return latest["metrics"]["iteration"] if latest else None

    def cleanup(self) -> None:
        for session in self.sessions:
            kill_session(session)
        shutil.rmtree(self.tmp, ignore_errors=True)


def snapshot(d: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(d.iterdir())}


def iterations(rows: list[dict[str, Any]]) -> list[Any]:
    return ["final" if r.get("done_training") else r["iteration"] for r in rows]


def new_rows(trial_dir: Path, before: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trial's Tune results not in ``before`` (a restored trial may rewrite its
    ``result.json`` from scratch rather than append to it)."""
    seen = {(r.get("iteration"), r.get("done_training"), r.get("date")) for r in before}
    return [r for r in results(trial_dir)
            if (r.get("iteration"), r.get("done_training"), r.get("date")) not in seen]


@pytest.fixture
def sweep(ray_env, cache_dir, tmp_path):  # noqa: F811
    s = Sweep(tmp_path, cache_dir, "faults")
    yield s
    s.cleanup()


@pytest.mark.timeout(480)
def test_sigint_mid_training_then_resume_continues_from_the_checkpoint(sweep):
    rc = sweep.run(loss="hytver", at=EVERY, sig="SIGINT")
    assert rc == 130, sweep.tail()
    assert "--resume" in sweep.tail()
    done_id, done_dir = sweep.trial("dice")
    tid, trial_dir = sweep.trial("hytver")
    assert iterations(results(done_dir)) == [3, 6, 9, "final"]
    ckpt = sweep.checkpoint_iteration(tid)
    assert ckpt is not None and ckpt >= EVERY
    seen = results(trial_dir)
    assert not (sweep.results_dir / "report").exists(), "an interrupted sweep wrote a report"
    assert [s["status"] for s in trial_statuses(sweep.results_dir).values()] == ["ok"]
    before = snapshot(done_dir), snapshot(sweep.storage / f"train-{done_id}")

    rc = sweep.run(resume=True)
    assert rc == 0, sweep.tail()
    # The interrupted trial went on from its checkpoint: its first result after the resume
    # is the checkpoint's iteration + 3, not 3.
    after = iterations(new_rows(trial_dir, seen))
    assert after[0] == ckpt + EVERY and after[-1] == "final", (ckpt, iterations(seen), after)
    # The finished trial was not rerun: no Tune result added, no Train file touched.
    assert (snapshot(done_dir), snapshot(sweep.storage / f"train-{done_id}")) == before
    statuses = trial_statuses(sweep.results_dir)
    assert sorted(s["status"] for s in statuses.values()) == ["ok", "ok"], statuses
    assert_report(sweep.results_dir)


@pytest.mark.timeout(600)
def test_sigkill_at_the_final_report_and_mid_training_then_resume(sweep):
    # 1. Killed after dice's last validation + checkpoint, before its final report (while
    # its workers evaluate the test cases or just after).
    rc = sweep.run(loss="dice", at=ITERATIONS, sig="SIGKILL")
    assert rc == -9, sweep.tail()
    dice_id, dice_dir = sweep.trial("dice")
    assert sweep.checkpoint_iteration(dice_id) == ITERATIONS
    dice_rows = results(dice_dir)
    assert "final" not in iterations(dice_rows), "the kill came too late"

    # 2. Resumed: dice reports its final result from the restored last checkpoint (with the
    # metric Tune checks, val_dice), then hytver starts and is killed mid-training.
    rc = sweep.run(loss="hytver", at=EVERY, sig="SIGKILL", resume=True)
    assert rc == -9, sweep.tail()
    # Nothing was trained again: only the final result came after iteration 9.
    (final,) = new_rows(dice_dir, dice_rows)
    assert final.get("done_training") == 1 and "val_dice" in final, final
    tid, trial_dir = sweep.trial("hytver")
    ckpt = sweep.checkpoint_iteration(tid)
    assert ckpt is not None and ckpt >= EVERY
    seen = results(trial_dir)
    before = snapshot(dice_dir)

    # 3. Resumed again: hytver continues from its checkpoint; dice is not rerun.
    rc = sweep.run(resume=True)
    assert rc == 0, sweep.tail()
    # The workers may train on for a moment after the result that triggered the kill, so the
    # last checkpoint can be later than iteration 3; whichever it is, the resumed trial reports
    # exactly the iterations after it (none before: nothing is trained twice), then its final.
    after = iterations(new_rows(trial_dir, seen))
    expected = [i for i in range(EVERY, ITERATIONS + 1, EVERY) if i > ckpt] + ["final"]
    assert after == expected, (ckpt, iterations(seen), after)
    assert snapshot(dice_dir) == before
    statuses = trial_statuses(sweep.results_dir)
    assert sorted(s["status"] for s in statuses.values()) == ["ok", "ok"], statuses
    for status in statuses.values():
        cases = (sweep.results_dir / "trials" / status["trial"] / "cases.csv").read_text()
        assert len(cases.splitlines()) == 1 + 2  # header + the 2 test cases
    assert_report(sweep.results_dir)


@pytest.mark.timeout(600)
def test_sigkill_after_a_trials_final_report_then_resume_does_not_evaluate_it_again(sweep):
    # Killed when dice's final result reaches the driver: its workers have written the test
    # rows and the final-result marker, but Tune has not recorded the trial as finished.
    rc = sweep.run(loss="dice", at="final", sig="SIGKILL")
    assert rc == -9, sweep.tail()
    dice_id, dice_dir = sweep.trial("dice")
    run = sweep.storage / f"train-{dice_id}"
    assert (run / "final.json").is_file()
    seen = results(dice_dir)
    assert "final" not in iterations(seen), "Tune recorded the final result before the kill"
    cases = run / "cases.csv"
    before = cases.read_bytes(), cases.stat().st_mtime_ns

    # Resumed: Tune restarts dice (it was running), which reports the stored result at once.
    rc = sweep.run(resume=True)
    assert rc == 0, sweep.tail()
    assert (cases.read_bytes(), cases.stat().st_mtime_ns) == before, "the trial was re-evaluated"
    (final,) = new_rows(dice_dir, seen)  # no iteration trained again, one final result
    assert final.get("done_training") == 1 and final.get("final_from_storage") == 1, final
    statuses = trial_statuses(sweep.results_dir)
    assert sorted(s["status"] for s in statuses.values()) == ["ok", "ok"], statuses
    assert_report(sweep.results_dir)
