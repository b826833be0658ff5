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

from hytver_dist.model import (
    CheckpointError,
    build_model,
    load_checkpoint,
    load_pretrained,
    save_atomic,
)
from hytver_dist.run import evaluate, pretrain, train, train_cli


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
    full = train.train_loop(spec(), data, "cpu", report=lambda r, p: payloads.append(p))
    payload = payloads[0]  # mid-run: iteration 2 of 4, with the rest still to train
    assert payload["iteration"] < full.iterations
    assert plain(payload), payload.keys()
    assert isinstance(payload["torch_rng"], torch.Tensor)
    path = tmp_path / "checkpoint.pt"
    save_atomic(payload, path)
    loaded = load_checkpoint(path)
    assert loaded["iteration"] == payload["iteration"] and loaded["spec"] == payload["spec"]
    assert torch.equal(loaded["torch_rng"], payload["torch_rng"])
    # A run resumed from the loaded file trains the remaining iterations exactly as the
    # uninterrupted run did (weights, optimizer state and RNG all came through the file).
    resumed = train.train_loop(spec(), data, "cpu", resume=loaded)
    assert len(resumed.history) > len(payload["history"])
    assert resumed.history == full.history
    for k, v in full.best_state.items():
        torch.testing.assert_close(resumed.best_state[k], v, rtol=1e-6, atol=1e-7)


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


def crafted(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """(a weights file whose unpickling would run code, the file that code would create)."""
    marker = tmp_path / f"{name}-code-ran"
    path = tmp_path / name
    torch.save({"model": {"w": torch.zeros(2)}, "loss": Exploit(marker)}, path)
    return path, marker


def test_load_pretrained_refuses_a_crafted_file(tmp_path):
    path, marker = crafted(tmp_path, "init.pt")
    model = build_model({"n_filters": 4})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=rf"{path.name}: refused: the checkpoint holds"):
        load_pretrained(model, path)
    assert not marker.exists()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_pretrained_stage_loader_refuses_a_crafted_file(tmp_path):
    """``run.pretrain.load_state`` (a stored stage, local or behind a URI) and ``open_init``,
    which the sweep's workers and the train CLI call on ``model.init_checkpoint``."""
    path, marker = crafted(tmp_path, "model.pt")
    for where in (str(path), path.as_uri()):
        with pytest.raises(CheckpointError, match=r"model\.pt: refused"):
            pretrain.load_state(where)
    with pytest.raises(CheckpointError, match=r"model\.pt: refused"):
        pretrain.open_init(path.as_uri())
    assert not marker.exists()


def test_training_from_a_crafted_init_checkpoint_is_refused(data, tmp_path):  # noqa: F811
    """A local ``init`` reaches ``train_loop`` as a path (the sweep's workers, the train CLI)."""
    path, marker = crafted(tmp_path, "init.pt")
    with pytest.raises(CheckpointError, match=r"init\.pt: refused"):
        train.train_loop(spec(), data, "cpu", init=pretrain.open_init(str(path)))
    assert not marker.exists()
