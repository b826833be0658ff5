"""The sweep on real Ray: a multi-node cluster on one host, a data-parallel trial across two
nodes, a killed training worker, ASHA, bad data and impossible requests (driver kills and
resumes: ``test_faults.py``).

One ``ray.cluster_utils.Cluster`` per module (head: drivers only, ``num_cpus=0`` and
``TRAIN_DRIVER``; two 1-CPU worker nodes); the ASHA test runs the CLI in a subprocess on its
own embedded Ray (own ``RAY_TMPDIR``, with the dashboard). Everything is polled with deadlines
and every test has a hard ``pytest-timeout``; leftover Ray processes are killed by process
group / session, never by name. Linux only (``/proc``, signals). Most of the time is Ray and
torch start-up per trial (training itself is ~2 s).
"""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

if not sys.platform.startswith("linux"):
    pytest.skip("uses /proc and POSIX signals", allow_module_level=True)

from ray import tune  # noqa: E402

from hytver_dist.sweep import main, run_sweep  # noqa: E402
from hytver_dist.sweep.config import SweepConfig  # noqa: E402

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
    from hytver_dist.run.prepare import prepare_data

    cache = tmp_path_factory.mktemp("hcache")
    cfg = SweepConfig.load(sweep_dict("warm", cache))
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
    cfg = SweepConfig.load(sweep_dict("two-nodes", tmp_path))
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
    for trial in statuses:  # the validation history, one row per evaluation
        curves = pd.read_csv(results_dir / "trials" / trial / "curves.csv")
        assert curves["iteration"].tolist() == [3, 6] and curves["val_dice"].notna().all()
    assert (results_dir / "report" / "learning_curves.png").is_file()

    # Each trial's single worker needs 1 CPU and each worker node has 1: two trials at once
    # must have trained on the two different worker nodes, never on the CPU-less head.
    finals = [results(p)[-1] for p in tune_trials(tmp_path / "two-nodes").values()]
    assert all(r["done_training"] == 1 and r["iteration"] == 6 for r in finals)
    worker_nodes = {n.node_id for n in cluster.worker_nodes}
    assert {r["node_id"] for r in finals} == worker_nodes
    assert cluster.head_node.node_id not in {r["node_id"] for r in finals}


@pytest.mark.timeout(300)
def test_data_parallel_trial_across_two_nodes(cluster, cache_dir, tmp_path):
    """A trial with two workers (DDP over gloo), one per 1-CPU node."""
    from hytver_dist.model import build_model, load_checkpoint
    from hytver_dist.run.evaluate import evaluate_model
    from hytver_dist.run.prepare import prepare_data

    # max_failures: on an overloaded host a worker may miss Train's health check; a restart
    # from the checkpoint changes none of the assertions below.
    cfg = SweepConfig.load(sweep_dict("ddp", tmp_path, search={"losses": ["dice"]},
                                 resources={"num_workers": 2, "max_failures": 2}))
    run_sweep(cfg, address=cluster.address, cache_dir=str(cache_dir), verbose=0)
    (status,) = trial_statuses(Path(cfg.results_dir)).values()
    assert status["status"] == "ok", status
    (trial_id,) = tune_trials(tmp_path / "ddp")
    run = tmp_path / f"train-{trial_id}"
    workers = json.loads((run / "workers.json").read_text())
    assert [w["rank"] for w in workers] == [0, 1]
    assert {w["node_id"] for w in workers} == {n.node_id for n in cluster.worker_nodes}
    # DDP kept the replicas identical; each rank drew its own patches.
    assert workers[0]["params_digest"] == workers[1]["params_digest"], workers
    assert workers[0]["patch_digest"] != workers[1]["patch_digest"], workers

    # The test rows the two ranks gathered equal a 1-process evaluation of the checkpoint.
    (final,) = [p for p in map(load_checkpoint, run.glob("checkpoint_*/checkpoint.pt"))
                if p["iteration"] == 6]
    model = build_model(cfg.model.vnet_kwargs())
    model.load_state_dict(final["best_state"])
    data = prepare_data(cfg.data, cache_dir=cache_dir)
    expected = evaluate_model(model, data, cfg.training)
    got = pd.read_csv(run / "cases.csv", dtype={"case": str})
    assert len(got) == 2 and list(got.pop("seed")) == [0, 0]
    expected = pd.read_csv(io.StringIO(expected.to_csv(index=False)), dtype={"case": str})
    pd.testing.assert_frame_equal(got, expected, rtol=1e-6)


@pytest.mark.timeout(300)
def test_sweep_whose_trials_all_fail_exits_1_with_a_summary(cluster, cache_dir, tmp_path,
                                                             capsys):
    """One corrupt case passes the up-front check (other cases are readable) but fails every
    trial when it loads all cases."""
    from hytver_dist.run.prepare import synthetic_root

    config = tmp_path / "allfail.yaml"
    cfg_dict = sweep_dict("allfail", tmp_path / "storage")
    config.write_text(yaml.safe_dump(cfg_dict))
    data = tmp_path / "data"
    shutil.copytree(synthetic_root(SweepConfig.load(cfg_dict).data, cache_dir), data)
    bad = data / "syn003" / "flair_time01_on_middle_space.nii.gz"
    bad.write_bytes(bad.read_bytes()[:200])
    rc = main(["--config", str(config), "--address", cluster.address, "--data", str(data),
               "--cache", str(cache_dir)])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "none of its 2 trials finished" in err, err
    assert err.count("syn003") >= 2 and err.count(": failed: ") == 2, err
    assert not (tmp_path / "storage" / "allfail" / "results" / "report").exists()


def run_killing_a_worker(cfg: Any, cluster: Any, cache_dir: Path, storage: Path,
                         when: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Run the sweep while a thread SIGKILLs one Train worker process, once, as soon as Train
    has registered a checkpoint whose metrics satisfy ``when``. Returns ``{"pid", "after"}``
    (the killed pid, the checkpoint's iteration), empty when nothing was killed."""
    killed: dict[str, Any] = {}

    def kill() -> None:
        deadline = time.monotonic() + 200
        while time.monotonic() < deadline:
            for snap in storage.glob("train-*/checkpoint_manager_snapshot.json"):
                try:
                    latest = json.loads(snap.read_text())["latest_checkpoint_result"]
                    ready = bool(latest) and when(latest["metrics"])
                except (OSError, ValueError, KeyError, TypeError):
                    continue
                pids = train_worker_pids(cluster) if ready else []
                if pids:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.update(pid=pids[0], after=latest["metrics"]["iteration"])
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill, daemon=True)
    killer.start()
    run_sweep(cfg, address=cluster.address, cache_dir=str(cache_dir), verbose=0)
    killer.join(timeout=5)
    return killed


@pytest.mark.timeout(300)
def test_killed_worker_of_two_restarts_from_checkpoint(cluster, cache_dir, tmp_path):
    """One of a trial's two workers is SIGKILLed once a checkpoint is registered: Train
    restarts the worker group from that checkpoint, so the iterations it covered are reported
    once, and the trial finishes."""
    iterations, every = 24, 3
    cfg = SweepConfig.load(sweep_dict(
        "kill-worker", tmp_path, search={"losses": ["dice"]},
        training={"iterations": iterations, "eval_every": every, "checkpoint_every": every},
        resources={"max_failures": 2, "num_workers": 2}))
    killed = run_killing_a_worker(cfg, cluster, cache_dir, tmp_path, lambda metrics: True)

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
    # The restarted group is again two workers, on the two nodes, neither the killed one.
    workers = json.loads((tmp_path / f"train-{trial_dir.name.rsplit('-', 1)[-1]}"
                          / "workers.json").read_text())
    assert [w["rank"] for w in workers] == [0, 1], workers
    assert killed["pid"] not in {w["pid"] for w in workers}
    assert {w["node_id"] for w in workers} == {n.node_id for n in cluster.worker_nodes}


@pytest.mark.timeout(300)
def test_trial_of_two_seeds_killed_in_its_second_seed_keeps_the_first(cluster, cache_dir,
                                                                      tmp_path):
    """A trial trains seeds 0 and 1 one after another; its worker is SIGKILLed once seed 1 has
    a checkpoint. The restarted worker group neither retrains nor re-evaluates seed 0 and
    continues seed 1 from that checkpoint; cases.csv ends with both seeds' rows."""
    iterations, every = 12, 3
    cfg = SweepConfig.load(sweep_dict(
        "kill-seeds", tmp_path, search={"losses": ["dice"], "seeds": [0, 1],
                                        "seeds_per_trial": 2},
        training={"iterations": iterations, "eval_every": every, "checkpoint_every": every},
        resources={"max_failures": 2}))
    killed = run_killing_a_worker(cfg, cluster, cache_dir, tmp_path,
                                  lambda metrics: metrics.get("seed") == 1)

    assert "pid" in killed, "no worker was found to kill during the second seed"
    (status,) = trial_statuses(Path(cfg.results_dir)).values()
    assert status["status"] == "ok" and status["seed"] == "0_1", status
    (trial_dir,) = tune_trials(tmp_path / "kill-seeds").values()
    rows = results(trial_dir)
    assert rows[-1]["done_training"] == 1 and rows[-1]["seeds_done"] == 2
    by_seed = {s: [r["iteration"] for r in rows if r.get("seed") == s
                   and not r.get("done_training")] for s in (0, 1)}
    # seed 0 ran once: each of its evaluations was reported exactly once
    assert by_seed[0] == list(range(every, iterations + 1, every)), by_seed
    # seed 1 continued from its checkpoint: what the checkpoint covered ran once
    for it in range(every, killed["after"] + 1, every):
        assert by_seed[1].count(it) == 1, (it, by_seed, killed)
    cases = pd.read_csv(Path(cfg.results_dir) / "trials" / trial_dir.name / "cases.csv",
                        dtype={"case": str})
    assert sorted(cases.groupby("seed")["case"].count().items()) == [(0, 2), (1, 2)]
    curves = pd.read_csv(Path(cfg.results_dir) / "trials" / trial_dir.name / "curves.csv")
    expected = list(range(every, iterations + 1, every))
    assert curves.groupby("seed")["iteration"].apply(list).to_dict() == {0: expected,
                                                                         1: expected}


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
    from hytver_dist.run.prepare import synthetic_root

    cfg = SweepConfig.load(sweep_dict("bad-data", tmp_path / "storage",
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
def test_asha_stops_a_trial_certain_to_lose(ray_env, cache_dir, tmp_path):
    """ASHA through the CLI (own embedded Ray with the dashboard, which early stopping needs).

    Two arms of dice_ce, one at a time: lambda_dice 1 learns; lambda_dice = lambda_ce = 0 is a
    zero loss, so Adam never moves its weights (as with lr 0). With grace_period 2 and
    reduction_factor 2 over 4 validations, the rungs are at results 2 and 4: the frozen arm
    reaches result 2 below the learner's and must be stopped there; it is 'stopped', never
    'failed', and gets no test results.
    """
    name = "asha"
    storage = tmp_path / "storage"
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(sweep_dict(
        name, storage, training={"iterations": 8, "eval_every": 2, "checkpoint_every": 2},
        search={"losses": ["dice_ce"],
                "hyperparameters": {"dice_ce": {"lambda_dice": [1.0, 0.0],
                                                "lambda_ce": 0.0}},
                "scheduler": {"type": "asha", "grace_period": 2, "reduction_factor": 2}},
        resources={"max_concurrent_trials": 1})))
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
    by_arm = {s["trial"].split("-seed")[0]: s for s in statuses.values()}
    assert sorted(by_arm) == ["dice_ce-000", "dice_ce-001"], statuses
    learner, frozen = by_arm["dice_ce-000"], by_arm["dice_ce-001"]
    assert learner["status"] == "ok", learner
    assert frozen["status"] == "stopped", frozen
    for status in statuses.values():
        has_cases = (storage / name / "results" / "trials" / status["trial"]
                     / "cases.csv").is_file()
        assert has_cases == (status["status"] == "ok")
    rows = {tid: results(d) for tid, d in tune_trials(storage / name).items()}
    by_trial = {statuses_key: rows[statuses_key.rsplit("-", 1)[-1]] for statuses_key in
                (learner["trial"], frozen["trial"])}
    frozen_rows, learner_rows = by_trial[frozen["trial"]], by_trial[learner["trial"]]
    # Stopped at the grace-period rung (its 2nd result, iteration 4), below the learner there.
    assert [r["iteration"] for r in frozen_rows] == [2, 4], frozen_rows
    assert frozen_rows[1]["val_dice"] < learner_rows[1]["val_dice"]
    assert frozen_rows[0]["train_loss"] == 0.0
    assert_report(storage / name / "results")


@pytest.mark.timeout(300)
def test_the_same_sweep_started_twice_at_once_runs_once(ray_env, cache_dir, tmp_path):
    """Two identical CLI runs started together (two terminals, a scheduler's retry): one runs,
    the other exits 2 at once naming it; the report counts each seed's cases once."""
    name, seeds = "twice", [0, 1]
    storage = tmp_path / "storage"
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(sweep_dict(
        name, storage, search={"losses": ["dice"], "seeds": seeds, "seeds_per_trial": 2})))
    sub_tmp = tempfile.mkdtemp(prefix="ht", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": sub_tmp}
    args = ["--config", str(config), "--cache", str(cache_dir), "--num-cpus", "2"]
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [_run_cli(args, env, log) for log in logs]
    try:
        ended = wait_for("one of the two runs to exit",
                         lambda: [i for i, p in enumerate(procs) if p.poll() is not None], 120)
        first = ended[0]
        loser, winner = procs[first], procs[1 - first]
        assert winner.poll() is None, "both runs ended: the first did not wait for the other"
        assert loser.returncode == 2, logs[first].read_text()[-3000:]
        message = logs[first].read_text()
        assert (f"error: sweep '{name}' is running (pid {winner.pid} on "
                f"{socket.gethostname()} since ") in message, message
        assert "): wait for it, or use another name" in message, message
        assert winner.wait(timeout=270) == 0, logs[1 - first].read_text()[-3000:]
    finally:
        for proc in procs:
            _stop_group(proc, signal.SIGKILL, 10)
            kill_session(proc.pid)
        shutil.rmtree(sub_tmp, ignore_errors=True)
    experiment = storage / name
    assert len(list(experiment.glob("experiment_state-*.json"))) == 1
    assert len(tune_trials(experiment)) == 1  # one trial of (dice, seeds 0 and 1)
    assert_report(experiment / "results")
    cases = pd.read_csv(experiment / "results" / "report" / "cases.csv", dtype={"case": str})
    assert len(cases) == 2 * len(seeds)  # the 2 test cases x 2 seeds
    t1 = pd.read_csv(experiment / "results" / "report" / "table1.csv")
    dice = t1[t1["metric"] == "dice"].iloc[0]
    positive = cases.loc[cases["has_lesions"], "case"].nunique()
    assert dice["n"] + dice["n_nan"] == positive * len(seeds), (dice, positive)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_sweep_rerun_into_the_same_results_repeats_its_rows_and_counts_them_once(
        cluster, cache_dir, tmp_path):
    """Two complete runs of one sweep (slow: twice the sweep) with their own storage but one
    results folder: the CPU runs are deterministic, so the second run's rows equal the first's
    to the last digit, and its report counts each (loss, seed, case) once, with a warning."""
    shared = tmp_path / "results"
    search = {"losses": ["dice", "hytver"], "seeds": [0]}
    for run in ("a", "b"):
        d = sweep_dict("rerun", tmp_path / run, search=search)
        d["storage"]["results_dir"] = str(shared)
        cfg = SweepConfig.load(d)
        if run == "a":
            run_sweep(cfg, address=cluster.address, cache_dir=str(cache_dir), verbose=0)
            continue
        with pytest.warns(UserWarning, match="with identical values") as caught:
            run_sweep(cfg, address=cluster.address, cache_dir=str(cache_dir), verbose=0)
    assert len([w for w in caught if "repeats" in str(w.message)]) == 2  # one per loss
    statuses = trial_statuses(shared)
    assert len(statuses) == 4 and all(s["status"] == "ok" for s in statuses.values())
    summary = assert_report(shared)
    assert summary.count("with identical values") == 2, summary
    cases = pd.read_csv(shared / "report" / "cases.csv", dtype={"case": str})
    assert sorted(cases.groupby("loss").size().items()) == [("dice", 2), ("hytver", 2)]
    assert cases["trial"].str.contains("seed0").all()


@pytest.mark.timeout(300)
def test_pretrain_stage_runs_once_and_trials_fine_tune_from_it(cluster, cache_dir, tmp_path,
                                                                capfd):
    pre = {"loss": "dice_ce", "iterations": 3, "eval_every": 3}
    cfg = SweepConfig.load(sweep_dict("pre-a", tmp_path, pretrain=pre,
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
    again = SweepConfig.load(sweep_dict("pre-b", tmp_path, pretrain=pre,
                                   search={"losses": ["dice"], "seeds": [1]},
                                   training={"lr": 5e-4}))
    run_sweep(again, address=cluster.address, cache_dir=str(cache_dir), verbose=0)
    assert "pretrained model (reused)" in capfd.readouterr().out
    assert list((tmp_path / "pretrain").glob("*/model.pt")) == stored
    assert stored[0].stat().st_mtime_ns == first
    for c in (cfg, again):
        statuses = trial_statuses(Path(c.results_dir))
        assert [s["status"] for s in statuses.values()] == ["ok"], statuses
