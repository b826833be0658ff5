"""Experiment tracking (``tracking:``): the config section, the MLflow runs and their resume,
TensorBoard's event files, and the refusal when mlflow is missing.

The sweep test reuses ``test_faults``' driver harness: a tiny sweep of 2 losses x 1 seed on its
own embedded Ray, SIGKILLed mid-training and resumed, with MLflow's default store (a SQLite
file under the results folder). The cluster test uses ``test_sweep_ray``'s 3-node cluster (a
head without CPUs): trials train on the worker nodes, the head's driver logs the runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from test_faults import EVERY, ITERATIONS, Sweep
from test_sweep_ray import cache_dir, cluster, ray_env, sweep_dict  # noqa: F401  (fixtures)

from hytver_dist.run.config import ConfigError
from hytver_dist.sweep import run_sweep
from hytver_dist.sweep.config import MlflowConfig, SweepConfig, TrackingConfig

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- config
def test_tracking_defaults_and_errors():
    cfg = SweepConfig.load({"name": "x"})
    assert cfg.tracking == TrackingConfig()
    assert cfg.tracking.tensorboard is True and cfg.tracking.mlflow.enabled is False
    cfg = SweepConfig.load({"name": "x", "tracking": {"mlflow": {
        "enabled": True, "tracking_uri": "http://mlflow:5000", "tags": {"round": 2}}}})
    assert cfg.tracking.mlflow.tags == {"round": "2"}
    bad = {
        "tracking.mlfow: unknown key 'mlfow' (did you mean 'mlflow'?)": {"mlfow": {}},
        "tracking.mlflow.enabeld: unknown key 'enabeld' (did you mean 'enabled'?)":
            {"mlflow": {"enabeld": True}},
        "tracking.mlflow.tracking_uri: expected a URI": {"mlflow": {"tracking_uri": "mlruns"}},
        "tracking.mlflow.tags.a: Input should be a valid string":
            {"mlflow": {"tags": {"a": [1]}}},
        "tracking.tensorboard: Input should be a valid boolean; got 'yes'": {"tensorboard": "yes"},
    }
    for message, section in bad.items():
        with pytest.raises(ConfigError, match="^<dict>: " + message.replace("(", r"\(")
                           .replace(")", r"\)").replace("?", r"\?")):
            SweepConfig.load({"name": "x", "tracking": section})


def test_documented_tracking_keys_match_the_model():
    doc = (ROOT / "docs" / "sweeps.md").read_text()
    section = doc.split("### `tracking`")[1].split("\n## ")[0]
    block = section.split("```yaml")[1].split("```")[0]
    assert SweepConfig.load({"name": "x", **yaml.safe_load(block)}).tracking == TrackingConfig()
    for key in MlflowConfig.model_fields:
        assert f"`mlflow.{key}`" in section, key
    assert "`tensorboard`" in section
    assert "## Watching a sweep" in doc
    everything = doc.split("## All keys and their defaults")[1].split("```yaml")[1].split("```")[0]
    assert SweepConfig.load(yaml.safe_load(everything)).tracking == TrackingConfig()
    assert "tracking:" in everything


# ----------------------------------------------------------------------------- no mlflow
REFUSE = """
import sys
sys.modules["mlflow"] = None  # as if not installed: importlib.util.find_spec returns None
from hytver_dist.sweep import main
rc = main(["--config", sys.argv[1]])
import ray
print("RESULT", rc, ray.is_initialized())
"""


@pytest.mark.timeout(120)
def test_mlflow_enabled_without_the_package_is_refused_before_ray_starts(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"name": "nomlflow", "storage": {"path": str(tmp_path)},
                                      "tracking": {"mlflow": {"enabled": True}}}))
    ray_tmp = Path(tempfile.mkdtemp(prefix="hn", dir="/tmp"))
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "-c", REFUSE, str(config)], capture_output=True,
                         text=True, cwd=ROOT, env=env, timeout=110)
    assert "RESULT 2 False" in out.stdout, out.stdout + out.stderr
    assert "tracking.mlflow.enabled" in out.stderr and "hytver-dist[tracking]" in out.stderr, \
        out.stderr
    assert list(ray_tmp.iterdir()) == [], "Ray started"  # no session directory
    assert not (tmp_path / "nomlflow").exists()
    ray_tmp.rmdir()


# ----------------------------------------------------------------------------- the callback
def _trial(tid: str, loss: str, params: dict, seeds: list[int]) -> SimpleNamespace:
    t = SimpleNamespace(trial_id=tid, config={"seeds": seeds, "arm": {
        "id": loss, "loss": loss, "loss_params": params}})
    t.__str__ = lambda: f"{loss}-{tid}"  # type: ignore[method-assign]
    return t


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.mark.timeout(120)
def test_trial_runs_survive_a_driver_restart_without_duplicates(tmp_path):
    """The callback as Tune drives it, then a second callback (a resumed driver: a new
    process, the same run store): same runs, a repeated validation logged once."""
    from hytver_dist.sweep import mlflow_runs, tracking
    from hytver_dist.sweep.tracking_callbacks import MlflowTrialRuns

    cfg = SweepConfig.load({"name": "cb", "search": {"losses": ["hytver"], "seeds": [0, 1],
                                                 "seeds_per_trial": 2},
                       "tracking": {"mlflow": {"enabled": True, "tags": {"team": "t"}}}})
    results = tmp_path / "results"
    store = tracking.start(cfg, results, "/exp/cb", resume=False)
    assert store["tracking_uri"] == f"sqlite:///{results / 'mlflow' / 'mlflow.db'}"
    trial = _trial("a1", "hytver", {"alpha": 0.3}, [0, 1])
    row = {"train_loss": 0.5, "val_dice": 0.25, "val_lesion_f1": float("nan"),
           "best_val_dice": 0.25, "time_this_iter_s": 3.0, "training_iteration": 1}

    cb = MlflowTrialRuns(str(mlflow_runs.store_path(results)))
    cb.setup()
    cb.on_trial_start(0, [], trial)
    cb.on_trial_result(0, [], trial, {**row, "iteration": 3, "seed": 0, "seed_index": 0})
    cb.on_trial_result(0, [], trial, {**row, "iteration": 6, "seed": 0, "seed_index": 0,
                                      "val_dice": 0.5})
    cb.on_trial_result(0, [], trial, {**row, "iteration": 3, "seed": 1, "seed_index": 1})

    resumed = MlflowTrialRuns(str(mlflow_runs.store_path(results)))
    again = tracking.start(cfg, results, "/exp/cb", resume=True)
    assert again["parent_run_id"] == store["parent_run_id"]
    resumed.setup()
    resumed.on_trial_start(0, [], trial)
    # Restarted from the seed-1 checkpoint at 3: iteration 3 comes again, then 6 (its final
    # report repeats it); then a restart from 6, whose validation the dead driver never got:
    # the final report carries it (but its best_val_dice is the mean over the seeds).
    resumed.on_trial_result(0, [], trial, {**row, "iteration": 3, "seed": 1, "seed_index": 1})
    resumed.on_trial_result(0, [], trial, {**row, "iteration": 6, "seed": 1, "seed_index": 1})
    resumed.on_trial_result(0, [], trial, {**row, "iteration": 6, "seed": 1, "seed_index": 1,
                                           "done_training": 1, "best_val_dice": 0.9})
    resumed.on_trial_result(0, [], trial, {**row, "iteration": 9, "seed": 1, "seed_index": 1,
                                           "done_training": 1, "best_val_dice": 0.9,
                                           "val_dice": 0.75})
    resumed.on_trial_complete(0, [], trial)

    client = MlflowClient(store["tracking_uri"])
    runs = client.search_runs([store["experiment_id"]])
    assert len(runs) == 2  # the sweep's and the trial's
    (run,) = [r for r in runs if r.info.run_id != store["parent_run_id"]]
    assert run.data.tags["mlflow.parentRunId"] == store["parent_run_id"]
    assert run.data.tags["team"] == "t" and run.data.tags["hytver.trial_id"] == "a1"
    assert run.info.status == "FINISHED"
    p = run.data.params
    assert (p["loss"], p["seeds"], p["loss.alpha"], p["loss.beta"]) == ("hytver", "0_1",
                                                                        "0.3", "0.7")
    assert _history(client, run.info.run_id, "val_dice/seed0") == [(3, 0.25), (6, 0.5)]
    assert _history(client, run.info.run_id, "val_dice/seed1") == [(3, 0.25), (6, 0.25),
                                                                   (9, 0.75)]
    assert _history(client, run.info.run_id, "best_val_dice/seed1") == [(3, 0.25), (6, 0.25)]
    assert "time_this_iter_s" not in run.data.metrics  # Tune's own fields are not logged
    assert "val_lesion_f1/seed0" in run.data.metrics  # NaN (no lesion found) is a point too
    # The loss's formula keywords only: the input form comes from the training settings.
    assert "loss.activation" not in p and "loss.include_background" not in p

    # A per-class test summary (a dataset of classes) is logged under valid metric names, once.
    metrics = ["dice", "jaccard", "precision", "recall", "hd95", "asd", "assd", "hd95_vox",
               "asd_vox", "lesion_f1", "lesion_sensitivity", "lesion_ppv", "fp_lesions",
               "fp_volume_mm3"]
    frame = pd.DataFrame([{"case": c, "class": k, "has_lesions": c == "001",
                           **{m: 0.5 for m in metrics}}
                          for c in ("001", "002") for k in ("edema", "core")])
    trial_dir = results / "trials" / "hytver-seed0_1-a1"
    trial_dir.mkdir(parents=True)
    frame.to_csv(trial_dir / "cases.csv", index=False)
    (trial_dir / "status.json").write_text(json.dumps({"trial": trial_dir.name, "status": "ok"}))
    assert tracking.log_test_results(results) == 1
    logged = client.get_run(run.info.run_id).data.metrics
    assert logged["test_edema/dice_mean"] == 0.5 and logged["test_n_cases"] == 4
    assert "test_core/neg_fp_lesions_median" in logged
    assert tracking.log_test_results(results) == 0  # logged once


def test_tensorboard_false_keeps_tune_from_adding_its_logger():
    from ray.tune.logger import TBXLoggerCallback
    from ray.tune.utils.callback import _create_default_callbacks

    from hytver_dist.sweep import tracking
    from hytver_dist.sweep.tracking_callbacks import NoTensorBoard

    for on in (True, False):
        cfg = SweepConfig.load({"name": "tb", "tracking": {"tensorboard": on}})
        made = _create_default_callbacks(tracking.callbacks(cfg, Path("/nonexistent")))
        tbx = [c for c in made if isinstance(c, TBXLoggerCallback)]
        assert len(tbx) == 1 and isinstance(tbx[0], NoTensorBoard) is (not on)


def test_an_unusable_tracking_uri_fails_up_front_and_later_failures_only_warn(tmp_path,
                                                                              capsys):
    from hytver_dist.sweep import mlflow_runs, tracking

    (tmp_path / "a-file").write_text("")
    bad = f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}"  # a file where a folder must be
    cfg = SweepConfig.load({"name": "u", "tracking": {"mlflow": {"enabled": True,
                                                             "tracking_uri": bad}}})
    with pytest.raises(ValueError, match=r"^<dict>: tracking\.mlflow\.tracking_uri: sqlite:"):
        tracking.start(cfg, tmp_path / "results", "/exp/u", resume=False)
    # The server went away after the trials: the sweep still ends, with a warning.
    mlflow_runs.write_store(mlflow_runs.store_path(tmp_path / "results"), {
        "enabled": True, "tracking_uri": bad, "parent_run_id": "p", "runs": {}})
    assert tracking.finish(tmp_path / "results", "FINISHED") is None
    assert "warning: MLflow: finish failed" in capsys.readouterr().err


def test_console_names_the_server_page_for_a_tracking_server():
    from hytver_dist.sweep.tracking import console_lines

    cfg = SweepConfig.load({"name": "srv", "tracking": {"mlflow": {
        "enabled": True, "tracking_uri": "http://mlflow.lab:5000/"}}})
    store = {"tracking_uri": "http://mlflow.lab:5000/", "experiment_id": "7",
             "parent_run_id": "abc", "experiment_name": "srv"}
    assert console_lines(cfg, "/shared/results/srv", store) == [
        "TensorBoard: tensorboard --logdir /shared/results/srv",
        "MLflow: http://mlflow.lab:5000/#/experiments/7/runs/abc"]
    cfg = SweepConfig.load({"name": "srv", "tracking": {"tensorboard": False}})
    assert console_lines(cfg, "/x/srv", None) == []


# ----------------------------------------------------------------------------- on Ray
def scalar_tags(event_files: list[Path]) -> set[str]:
    """Scalar tags in TensorBoard event files (TFRecords of ``Event`` protos)."""
    from tensorboardX.proto import event_pb2

    tags = set()
    for f in event_files:
        data, i = f.read_bytes(), 0
        while i < len(data):  # record: u64 length, u32 crc, payload, u32 crc
            n = int.from_bytes(data[i:i + 8], "little")
            event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            tags |= {v.tag for v in event.summary.value}
            i += 16 + n
    return tags


@pytest.fixture
def tracked_sweep(ray_env, cache_dir, tmp_path):  # noqa: F811
    s = Sweep(tmp_path, cache_dir, "tracked")
    cfg = yaml.safe_load(s.config.read_text())
    cfg["tracking"] = {"mlflow": {"enabled": True, "tags": {"team": "seg"}},
                       "tensorboard": True}
    s.config.write_text(yaml.safe_dump(cfg))
    yield s
    s.cleanup()


@pytest.mark.timeout(600)
def test_sweep_logs_runs_and_a_resume_after_a_kill_adds_none(tracked_sweep):
    s = tracked_sweep
    rc = s.run(loss="hytver", at=EVERY, sig="SIGKILL")
    assert rc == -9, s.tail()
    store_file = s.results_dir / "mlflow" / "runs.json"
    before = json.loads(store_file.read_text())
    assert len(before["runs"]) == 2, before  # dice finished, hytver was running
    rc = s.run(resume=True)
    assert rc == 0, s.tail()

    # The console named the TensorBoard directory, and the event files are there.
    lines = [ln for ln in s.log.read_text().splitlines() if ln.startswith("TensorBoard: ")]
    assert lines and all(ln == f"TensorBoard: tensorboard --logdir {s.experiment}"
                         for ln in lines), lines
    assert "MLflow: mlflow ui --backend-store-uri sqlite:///" in s.tail()
    for loss in ("dice", "hytver"):
        events = list(s.trial(loss)[1].glob("events.out.tfevents.*"))
        assert "ray/tune/val_dice" in scalar_tags(events), loss

    store = json.loads(store_file.read_text())
    assert store["runs"] == before["runs"] and store["parent_run_id"] == before["parent_run_id"]
    client = MlflowClient(store["tracking_uri"])
    runs = {r.info.run_id: r for r in client.search_runs([store["experiment_id"]])}
    assert set(runs) == {store["parent_run_id"], *store["runs"].values()}  # no duplicates

    parent = runs[store["parent_run_id"]]
    assert parent.info.status == "FINISHED" and parent.data.tags["team"] == "seg"
    assert parent.data.params["losses"] == "dice,hytver"
    report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/table1.csv", "report/summary.md", "report/box_dice.png"} <= report
    table1 = Path(mlflow.artifacts.download_artifacts(
        run_id=parent.info.run_id, artifact_path="report/table1.csv",
        tracking_uri=store["tracking_uri"], dst_path=str(s.results_dir / "dl")))
    assert table1.read_text() == (s.results_dir / "report" / "table1.csv").read_text()

    for tid, run_id in store["runs"].items():
        run = runs[run_id]
        loss = run.data.params["loss"]
        assert run.data.tags["mlflow.parentRunId"] == store["parent_run_id"]
        assert run.data.tags["hytver.trial_id"] == tid and run.info.status == "FINISHED"
        assert run.data.params["seeds"] == "0"
        if loss == "hytver":
            assert {"loss.alpha", "loss.beta", "loss.gamma"} <= set(run.data.params)
        # One point per validation, each once, however often the trial was restarted. dice
        # finished before the kill; hytver's validation 3 triggered it, and the final report
        # carries its last one (9). Validation 6 may have come while the driver was dead.
        for key in ("val_dice", "train_loss", "best_val_dice"):
            steps = [m.step for m in client.get_metric_history(run_id, key)]
            assert len(steps) == len(set(steps)), (loss, key, steps)
            if loss == "dice":
                assert sorted(steps) == [3, 6, 9], (key, steps)
            else:
                assert {EVERY, ITERATIONS} <= set(steps) <= {3, 6, 9}, (key, steps)
        # The test summary: logged once (the resume did not log dice's again).
        cases = (s.results_dir / "trials" / s.trial(loss)[1].name / "cases.csv")
        frame = pd.read_csv(cases)
        mean = frame.loc[frame["has_lesions"], "dice"].mean()
        (point,) = client.get_metric_history(run_id, "test_dice_mean")
        assert point.value == pytest.approx(mean)
        assert run.data.metrics["test_n_cases"] == len(frame)


def test_tracking_module_imports_mlflow_only_when_a_sweep_uses_it():
    code = textwrap.dedent("""
        import sys, hytver_dist.sweep.tracking
        print(any(m == 'mlflow' or m.startswith('mlflow.') for m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.timeout(300)
def test_mlflow_on_a_cluster_whose_trials_run_on_worker_nodes(cluster, cache_dir,  # noqa: F811
                                                              tmp_path, capfd):
    """Head without CPUs, trials on two worker nodes: the driver on the head logs it all (the
    tracking store here is a SQLite file on storage only the head needs to see)."""
    db = tmp_path / "shared" / "mlflow.db"
    cfg = SweepConfig.load(sweep_dict("cluster-mlflow", tmp_path / "storage", tracking={
        "mlflow": {"enabled": True, "tracking_uri": f"sqlite:///{db}",
                   "experiment_name": "lab"}}))
    run_sweep(cfg, address=cluster.address, cache_dir=str(cache_dir), verbose=0)
    assert f"MLflow: mlflow ui --backend-store-uri sqlite:///{db}" in capfd.readouterr().out
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("lab")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.params.get("loss", "sweep") for r in runs) == ["dice", "hytver",
                                                                        "sweep"]
    # Each trial's run ends as the trial did (on a loaded machine Ray Train may lose one).
    statuses = {s["trial"]: s["status"] for s in map(
        json.loads, map(Path.read_text, Path(cfg.results_dir).glob("trials/*/status.json")))}
    assert "ok" in statuses.values(), statuses
    for run in runs:
        if "loss" not in run.data.params:
            assert run.info.status == "FINISHED"  # the sweep's run
            continue
        ok = statuses[run.info.run_name] == "ok"
        assert run.info.status == ("FINISHED" if ok else "FAILED"), (run.info, statuses)
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_dice")]
        assert len(steps) == len(set(steps)) and set(steps) <= {3, 6}, steps
        if ok:
            assert steps == [3, 6] and "test_dice_mean" in run.data.metrics
