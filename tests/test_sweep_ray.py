"""The sweep on real Ray: a multi-node cluster on one host, a killed training worker, an
interrupted and resumed driver, bad data and impossible requests.

One ``ray.cluster_utils.Cluster`` per module (head: drivers only, ``num_cpus=0`` and
``TRAIN_DRIVER``; two 1-CPU worker nodes); the interrupt/resume test runs the CLI in
subprocesses on their own embedded Ray (own ``RAY_TMPDIR``). Everything is polled with
deadlines and every test has a hard ``pytest-timeout``; leftover Ray processes are killed
by process group / session, never by name. Linux only (``/proc``, signals). About 3.5-4 min
on 2 loaded cores, most of it Ray and torch start-up per trial (training itself is ~2 s).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("ray")
if not sys.platform.startswith("linux"):
    pytest.skip("uses /proc and POSIX signals", allow_module_level=True)

from ray import tune  # noqa: E402

from hytver_dist.config import load_config  # noqa: E402
from hytver_dist.sweep import main, run_sweep  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
REPORT_FILES = ("summary.md", "table1.csv", "box_dice.png", "failed_trials.csv")
# Faster Train runs (results every 0.2 s, no preemption watcher or metrics), no telemetry, and
# no auth token file needed by the nodes started here.
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "RAY_DEDUP_LOGS": "0",
}
SYNTHETIC = {"n_cases": 8, "seed": 0, "size": "tiny", "n_negative": 2}


def sweep_dict(name: str, storage: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """A tiny sweep (8 tiny synthetic cases, 6 iterations); ``sections`` update its sections."""
    cfg: dict[str, Any] = {
        "name": name,
        "data": {"synthetic": dict(SYNTHETIC),
                 "split": {"preset": "random", "n_test": 2, "n_val": 2, "seed": 0}},
        "model": {"n_filters": 4},
        "training": {"iterations": 6, "batch_size": 2, "patch_size": 32, "eval_every": 3,
                     "checkpoint_every": 3},
        "search": {"losses": ["hytver", "dice"], "seeds": [0]},
        "resources": {"max_failures": 0, "controller_failure_limit": 0},
        "storage": {"path": str(storage)},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return copy.deepcopy(cfg)


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 0.1) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def results(trial_dir: Path) -> list[dict[str, Any]]:
    """Tune's rows (``result.json``, one JSON object per line) of one trial."""
    path = trial_dir / "result.json"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            pass
    return rows


def tune_trials(experiment: Path) -> dict[str, Path]:
    """Trial directories of a Tune experiment by trial id (the name ends in ``-<trial id>``)."""
    return {p.name.rsplit("-", 1)[-1]: p for p in sorted(experiment.iterdir())
            if (p / "params.json").is_file()}


def trial_statuses(results_dir: Path) -> dict[str, dict[str, Any]]:
    return {p.parent.name: json.loads(p.read_text())
            for p in sorted((results_dir / "trials").glob("*/status.json"))}


def assert_report(results_dir: Path) -> str:
    report = results_dir / "report"
    for name in REPORT_FILES:
        assert (report / name).is_file(), f"report file {name} missing in {report}"
    return (report / "summary.md").read_text()


# ------------------------------------------------------------------------------ processes
def _stat(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after the command: state, ppid, pgrp, session, ..."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _pids_by(field: int) -> dict[int, list[int]]:
    """PIDs grouped by a stat field (1: parent, 2: process group, 3: session)."""
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))):
            out.setdefault(int(st[field]), []).append(int(entry))
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


def descendants(roots: list[int]) -> list[int]:
    children, out, todo = _pids_by(1), [], list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        if pid != os.getpid():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def kill_session(session: int) -> None:
    """SIGKILL what is left of a CLI run started with ``start_new_session``. (Ray's processes
    rewrite their environment with setproctitle, so the session, which they keep even when
    orphaned, is what identifies them.)"""
    kill_pids(_pids_by(3).get(session, []))


# ------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def ray_env() -> Iterator[str]:
    """Environment for every Ray process of this module; yields the short RAY_TMPDIR."""
    tmp = tempfile.mkdtemp(prefix="hr", dir="/tmp")  # unix socket paths must stay < 107 chars
    # Members of a process group led by this process that are not ours (e.g. `| tail`).
    others = set(_pids_by(2).get(os.getpid(), []))
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAY_ADDRESS", raising=False)
        mp.setenv("RAY_TMPDIR", tmp)
        for key, value in RAY_ENV.items():
            mp.setenv(key, value)
        yield tmp
    # Ray's reaper made this process a group leader: newcomers to its group are what this
    # module started (orphans included), and nothing of that may outlive the module.
    if os.getpgrp() == os.getpid():
        kill_pids([p for p in _pids_by(2).get(os.getpid(), []) if p not in others])
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic dataset and preprocessed cases, generated once for the module."""
    from hytver_dist.experiment import prepare_data

    cache = tmp_path_factory.mktemp("hcache")
    cfg = load_config(sweep_dict("warm", cache))
    prepare_data(cfg.data, cache_dir=cache)
    return cache


@pytest.fixture(scope="module")
def cluster(ray_env: str) -> Iterator[Any]:
    """Head with drivers only (no CPU), two 1-CPU worker nodes: a 3-node cluster on one host."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "resources": {"TRAIN_DRIVER": 2}, "include_dashboard": False,
        "object_store_memory": 150 * 2**20})
    try:
        for _ in range(2):
            c.add_node(num_cpus=1)
        c.wait_for_nodes()
        yield c
    finally:
        c.shutdown()


def raylet_pids(nodes: list[Any]) -> list[int]:
    import ray._private.ray_constants as rc

    return [info.process.pid for n in nodes
            for info in n.all_processes.get(rc.PROCESS_TYPE_RAYLET, [])]


def train_worker_pids(cluster: Any) -> list[int]:
    """Ray Train worker processes of *this* cluster (other users may run Ray on the host)."""
    nodes = [cluster.head_node, *cluster.worker_nodes]
    return [p for p in descendants(raylet_pids(nodes)) if "RayTrainWorker" in _cmdline(p)]


# ---------------------------------------------------------------------------------- tests
@pytest.mark.timeout(300)
def test_multi_node_sweep_spreads_trials_and_writes_report(cluster, cache_dir, tmp_path):
    cfg = load_config(sweep_dict("two-nodes", tmp_path))
    summary = run_sweep(cfg, address=cluster.address, cache_dir=str(cache_dir), verbose=0)

    results_dir = Path(cfg.results_dir)
    assert summary == results_dir / "report" / "summary.md"
    statuses = trial_statuses(results_dir)
    assert sorted(s["loss"] for s in statuses.values()) == ["dice", "hytver"]
    assert all(s["status"] == "ok" for s in statuses.values()), statuses
    for trial in statuses:
        cases = (results_dir / "trials" / trial / "cases.csv").read_text().splitlines()
        assert len(cases) == 1 + 2, cases  # header + the 2 test cases
    assert "| dice" in assert_report(results_dir)

    # Each trial's single worker needs 1 CPU and each worker node has 1: two trials at once
    # must have trained on the two different worker nodes, never on the CPU-less head.
    finals = [results(p)[-1] for p in tune_trials(tmp_path / "two-nodes").values()]
    assert all(r["done_training"] == 1 and r["iteration"] == 6 for r in finals)
    worker_nodes = {n.node_id for n in cluster.worker_nodes}
    assert {r["node_id"] for r in finals} == worker_nodes
    assert cluster.head_node.node_id not in {r["node_id"] for r in finals}


@pytest.mark.timeout(300)
def test_killed_worker_restarts_from_checkpoint(cluster, cache_dir, tmp_path):
    iterations, every = 24, 3
    cfg = load_config(sweep_dict(
        "kill-worker", tmp_path, search={"losses": ["dice"]},
        training={"iterations": iterations, "eval_every": every, "checkpoint_every": every},
        resources={"max_failures": 2}))
    killed: dict[str, Any] = {}

    def kill_after_first_checkpoint() -> None:
        """Once Train has registered a checkpoint, SIGKILL the trial's worker process."""
        deadline = time.monotonic() + 200
        while time.monotonic() < deadline and "pid" not in killed:
            for snap in tmp_path.glob("train-*/checkpoint_manager_snapshot.json"):
                try:
                    latest = json.loads(snap.read_text())["latest_checkpoint_result"]
                except (OSError, ValueError, KeyError):
                    continue
                pids = train_worker_pids(cluster) if latest else []
                if pids:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.update(pid=pids[0], after=latest["metrics"]["iteration"])
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    run_sweep(cfg, address=cluster.address, cache_dir=str(cache_dir), verbose=0)
    killer.join(timeout=5)

    assert "pid" in killed, "no training worker was found to kill after the first checkpoint"
    assert killed["after"] < iterations, killed
    (status,) = trial_statuses(Path(cfg.results_dir)).values()
    assert status["status"] == "ok", status
    (trial_dir,) = tune_trials(tmp_path / "kill-worker").values()
    rows = results(trial_dir)
    final = rows[-1]
    assert final["done_training"] == 1 and final["iteration"] == iterations
    assert final["worker_pid"] != killed["pid"], "the killed worker cannot have finished"
    reported = [r["iteration"] for r in rows if not r.get("done_training")]
    assert set(range(every, iterations + 1, every)) <= set(reported), reported
    # Resumed from the registered checkpoint, not from scratch: what it covered ran once.
    for it in range(every, killed["after"] + 1, every):
        assert reported.count(it) == 1, (it, reported, killed)


def _run_cli(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hytver_dist.sweep", *args], cwd=ROOT,
                            env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _stop_group(proc: subprocess.Popen, sig: int, timeout: float) -> int | None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


@pytest.mark.timeout(420)
def test_interrupted_cli_sweep_resumes_without_rerunning_finished_trials(
        cluster, ray_env, cache_dir, tmp_path, capsys):
    name = "interrupt"
    storage = tmp_path / "storage"
    experiment = storage / name
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(sweep_dict(
        name, storage, search={"losses": ["hytver", "dice", "tversky"]},
        resources={"max_concurrent_trials": 1})))
    # Own embedded Ray: a RAY_TMPDIR of its own, so it neither joins this module's cluster
    # (which recorded its address under ray_env) nor is joined by it.
    sub_tmp = tempfile.mkdtemp(prefix="hs", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": sub_tmp}
    log = tmp_path / "cli.log"
    args = ["--config", str(config), "--cache", str(cache_dir), "--num-cpus", "2"]
    proc = _run_cli(args, env, log)
    try:
        def first_finished() -> tuple[str, Path] | None:
            """The finished trial, once the next one runs (its Train run dir exists): with
            max_concurrent_trials 1 Tune generates it only after the first completed, so the
            interrupt finds one trial TERMINATED and one RUNNING."""
            if proc.poll() is not None:
                pytest.fail(f"sweep exited early ({proc.returncode}):\n{log.read_text()[-3000:]}")
            if not experiment.is_dir() or len(list(storage.glob("train-*"))) < 2:
                return None
            for tid, d in tune_trials(experiment).items():
                if any(r.get("done_training") for r in results(d)):
                    return tid, d
            return None

        done_id, done_dir = wait_for("the second trial to start", first_finished, 240, 0.2)
        rc = _stop_group(proc, signal.SIGINT, 90)
        if rc is None:
            rc = _stop_group(proc, signal.SIGKILL, 30)
            pytest.fail(f"the sweep ignored SIGINT for 90 s:\n{log.read_text()[-3000:]}")
        kill_session(proc.pid)  # leftovers of a hard exit
        text = log.read_text()
        assert rc == 130, f"exit code {rc} after SIGINT:\n{text[-3000:]}"
        assert "--resume" in text
        assert "interrupted with 2 of 3 trials unfinished" in text
        results_dir = experiment / "results"
        assert not (results_dir / "report").exists(), "an interrupted sweep wrote a report"
        # Only the finished trial has results; the others are not marked failed.
        assert [s["status"] for s in trial_statuses(results_dir).values()] == ["ok"]

        def snapshot(d: Path) -> dict[str, tuple[int, int]]:
            return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in d.iterdir()}

        before_tune = snapshot(done_dir)
        before_train = snapshot(storage / f"train-{done_id}")

        # Without --resume the existing sweep is refused (exit 2) before anything runs.
        assert main(["--config", str(config), "--address", cluster.address]) == 2
        assert "--resume" in capsys.readouterr().err

        proc = _run_cli([*args, "--resume"], env, log)
        try:
            rc = proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            pytest.fail(f"--resume did not finish in 300 s:\n{log.read_text()[-3000:]}")
        text = log.read_text()
        assert rc == 0, text[-3000:]
    finally:
        if proc.poll() is None:
            _stop_group(proc, signal.SIGKILL, 30)
        kill_session(proc.pid)
        shutil.rmtree(sub_tmp, ignore_errors=True)

    statuses = trial_statuses(results_dir)
    assert len(statuses) == 3 and all(s["status"] == "ok" for s in statuses.values()), statuses
    assert all((results_dir / "trials" / t / "cases.csv").is_file() for t in statuses)
    assert_report(results_dir)
    # The trial finished before the interrupt was restored, not rerun: Tune appended no
    # result and Train wrote no checkpoint.
    assert snapshot(done_dir) == before_tune
    assert snapshot(storage / f"train-{done_id}") == before_train
    for tid, d in tune_trials(experiment).items():
        rows = results(d)
        assert sum(bool(r.get("done_training")) for r in rows) == 1, (tid, rows)


class CorruptAfterFirstTrial(tune.Callback):
    """Truncates ``path`` (a .nii.gz) when the first trial completes: the next trial reads a
    corrupt file (the preprocessing cache is keyed on size and mtime, so it sees the change)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done = False

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if not self.done:
            data = self.path.read_bytes()
            self.path.write_bytes(data[: len(data) // 2])
            self.done = True


@pytest.mark.timeout(300)
def test_corrupt_case_fails_its_trial_and_the_report_lists_it(cluster, cache_dir, tmp_path):
    from hytver_dist.experiment import synthetic_root

    cfg = load_config(sweep_dict("bad-data", tmp_path / "storage",
                                       resources={"max_concurrent_trials": 1}))
    data = tmp_path / "data"
    shutil.copytree(synthetic_root(cfg.data, cache_dir), data)
    bad = data / "syn005" / "flair_time02_on_middle_space.nii.gz"
    assert bad.is_file()
    corrupt = CorruptAfterFirstTrial(bad)
    summary = run_sweep(cfg, address=cluster.address, data_dir=str(data),
                        cache_dir=str(cache_dir), callbacks=[corrupt], verbose=0)

    assert corrupt.done
    statuses = trial_statuses(Path(cfg.results_dir))
    by_status = {s["status"]: s for s in statuses.values()}
    assert sorted(s["status"] for s in statuses.values()) == ["failed", "ok"], statuses
    failed = by_status["failed"]
    assert "syn005" in failed["error"] and bad.name in failed["error"], failed["error"]
    assert not (Path(cfg.results_dir) / "trials" / failed["trial"] / "cases.csv").exists()
    assert summary is not None and summary.is_file()
    text = assert_report(Path(cfg.results_dir))
    assert failed["trial"] in text
    listed = (Path(cfg.results_dir) / "report" / "failed_trials.csv").read_text()
    assert failed["trial"] in listed


@pytest.mark.timeout(60)
def test_invalid_config_exits_2_naming_the_key(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(sweep_dict("bad", tmp_path, training={"eval_every": 0})))
    assert main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "training.eval_every" in err and str(config) in err, err


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("resources", "message"), [
    ({"num_workers": 8}, "can never fit"),
    ({"use_gpu": True}, "can never fit"),
    # Fits the cluster's totals (2 CPUs) but no single 1-CPU node.
    ({"num_workers": 1, "cpus_per_worker": 2}, "no node has that much"),
])
def test_impossible_resources_fail_fast(cluster, tmp_path, capsys, resources, message):
    config = tmp_path / "big.yaml"
    config.write_text(yaml.safe_dump(sweep_dict("big", tmp_path, resources=resources)))
    start = time.monotonic()
    assert main(["--config", str(config), "--address", cluster.address]) == 2
    err = capsys.readouterr().err
    short = "GPU" if resources.get("use_gpu") else "CPU"
    assert message in err and short in err, err
    assert time.monotonic() - start < 60
    # Nothing was started: no Tune experiment, no trial (only Ray's log of the attempt).
    assert not list((tmp_path / "big").glob("experiment_state*"))
    assert not (tmp_path / "big" / "results" / "trials").exists()
    assert (tmp_path / "big" / "results" / "logs" / "ray.log").is_file()


@pytest.mark.timeout(300)
def test_asha_sweep_reports_finished_and_stopped_trials(ray_env, cache_dir, tmp_path):
    """ASHA through the CLI (own embedded Ray with the dashboard, which early stopping needs):
    trials that reach the end report test results; pruned ones are 'stopped', never 'failed'."""
    name = "asha"
    storage = tmp_path / "storage"
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(sweep_dict(
        name, storage, training={"iterations": 8, "eval_every": 2, "checkpoint_every": 2},
        search={"losses": ["hytver"], "num_samples": 4,
                "hyperparameters": {"hytver": {"alpha": {"uniform": [0.3, 0.9]}}},
                "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2}},
        resources={"max_concurrent_trials": 2})))
    sub_tmp = tempfile.mkdtemp(prefix="ha", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": sub_tmp}
    log = tmp_path / "cli.log"
    proc = _run_cli(["--config", str(config), "--cache", str(cache_dir), "--num-cpus", "2"],
                    env, log)
    try:
        assert proc.wait(timeout=270) == 0, log.read_text()[-3000:]
    finally:
        _stop_group(proc, signal.SIGKILL, 10)
        kill_session(proc.pid)  # as in the interrupt test: no Ray process outlives it
        shutil.rmtree(sub_tmp, ignore_errors=True)
    statuses = trial_statuses(storage / name / "results")
    assert len(statuses) == 4
    kinds = sorted(s["status"] for s in statuses.values())
    assert set(kinds) <= {"ok", "stopped"} and "ok" in kinds, statuses
    for trial, status in statuses.items():
        has_cases = (storage / name / "results" / "trials" / trial / "cases.csv").is_file()
        assert has_cases == (status["status"] == "ok")
    assert_report(storage / name / "results")


@pytest.mark.timeout(300)
def test_pretrain_stage_runs_once_and_trials_fine_tune_from_it(cluster, cache_dir, tmp_path,
                                                                capfd):
    pre = {"loss": "dice_ce", "iterations": 3, "eval_every": 3}
    cfg = load_config(sweep_dict("pre-a", tmp_path, pretrain=pre,
                                 search={"losses": ["hytver"], "seeds": [0]}))
    run_sweep(cfg, address=cluster.address, cache_dir=str(cache_dir), verbose=0)
    stored = list((tmp_path / "pretrain").glob("*/model.pt"))
    assert len(stored) == 1
    assert (tmp_path / f"pretrain-{stored[0].parent.name}").is_dir()  # a Ray Train run
    first = stored[0].stat().st_mtime_ns
    out = capfd.readouterr().out  # the console: written to the file descriptor
    assert "pretrained model (" in out and "reused" not in out
    assert "1/1 done, 0 running, 0 failed" in out  # the compact progress line
    # The trial's worker loaded every key of the stored weights. Its report reaches Ray's log
    # file on the command line; under pytest's capture Ray's forwarding writes to the capture.
    seen = out + capfd.readouterr().out + (Path(cfg.results_dir) / "logs" / "ray.log").read_text()
    assert f"load_pretrained({stored[0]}): " in seen and "0 missing, 0 unexpected" in seen

    # Another sweep with the same data, split, model and pretrain settings reuses it.
    again = load_config(sweep_dict("pre-b", tmp_path, pretrain=pre,
                                   search={"losses": ["dice"], "seeds": [1]},
                                   training={"lr": 5e-4}))
    run_sweep(again, address=cluster.address, cache_dir=str(cache_dir), verbose=0)
    assert "pretrained model (reused)" in capfd.readouterr().out
    assert list((tmp_path / "pretrain").glob("*/model.pt")) == stored
    assert stored[0].stat().st_mtime_ns == first
    for c in (cfg, again):
        statuses = trial_statuses(Path(c.results_dir))
        assert [s["status"] for s in statuses.values()] == ["ok"], statuses
