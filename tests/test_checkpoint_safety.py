"""Checkpoints hold only tensors and plain types, and every loader refuses anything else
(``weights_only=True``): a crafted file on shared storage cannot run code."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from test_train import CONFIG, cache, data, spec  # noqa: F401  (module fixtures)

from hytver_dist.model import CheckpointError, load_checkpoint, save_atomic
from hytver_dist.run import evaluate, train, train_cli


class Exploit:
    """Unpickling this (weights_only=False) would create ``marker``: code would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def plain(obj) -> bool:
    """Whether ``obj`` is made of tensors and plain types only."""
    if isinstance(obj, dict):
        return all(isinstance(k, (str, int)) and plain(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return all(plain(v) for v in obj)
    return obj is None or isinstance(obj, (torch.Tensor, bool, int, float, str))


def test_training_checkpoint_is_plain_and_loads_weights_only(data, tmp_path):  # noqa: F811
    payloads = []
    train.train_loop(spec(), data, "cpu", report=lambda r, p: payloads.append(p))
    payload = payloads[-1]
    assert plain(payload), payload.keys()
    assert isinstance(payload["torch_rng"], torch.Tensor)
    path = tmp_path / "checkpoint.pt"
    save_atomic(payload, path)
    loaded = load_checkpoint(path)
    assert loaded["iteration"] == payload["iteration"] and loaded["spec"] == payload["spec"]
    assert torch.equal(loaded["torch_rng"], payload["torch_rng"])
    # A run resumed from the loaded file carries on exactly like one from the in-memory one.
    resumed = train.train_loop(spec(), data, "cpu", resume=loaded)
    assert resumed.history == payload["history"]


def test_checkpoint_holding_a_pickled_object_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "iteration": 2, "extra": Exploit(marker)},
               path)
    with pytest.raises(CheckpointError, match="refused: the checkpoint holds a pickled object"
                       ) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)
    assert not marker.exists(), "loading the checkpoint ran code"


def test_cli_resume_and_evaluate_refuse_a_crafted_checkpoint(tmp_path):
    marker = tmp_path / "code-ran"
    config = tmp_path / "unit.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"spec": Exploit(marker)}, run / "checkpoint.pt")
    with pytest.raises(SystemExit, match=r"--resume: .*checkpoint\.pt: refused"):
        train_cli.main(["--config", str(config), "--out", str(run), "--resume"])
    torch.save({"spec": Exploit(marker)}, run / "best_model.pt")
    (run / "run.json").write_text(json.dumps({"config": CONFIG, "split": {}}))
    with pytest.raises(SystemExit, match=r"best_model\.pt: refused"):
        evaluate.main(["--run", str(run)])
    assert not marker.exists()
