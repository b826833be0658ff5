"""Pretrain-then-fine-tune: the stage's key, its reuse, initial weights from a checkpoint (our
layout and CoactSeg's) and the config rules, on tiny synthetic data."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from config_helpers import tiny_run

from hytver_dist.model import build_model
from hytver_dist.run import pretrain, train, train_cli
from hytver_dist.run.config import ConfigError, RunConfig
from hytver_dist.run.prepare import prepare_data

CONFIG = {**tiny_run(iterations=2, eval_every=2, checkpoint_every=2),
          "pretrain": {"loss": "dice_ce", "iterations": 2, "eval_every": 2, "lr": 1e-3}}


def config(*overrides: str):
    return RunConfig.load(copy.deepcopy(CONFIG), list(overrides))


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def data(cache):
    return prepare_data(config().data, cache_dir=cache)


def test_key_depends_on_what_determines_the_weights(data, cache):
    key = pretrain.pretrain_key(config(), data)
    assert len(key) == 16 and key == pretrain.pretrain_key(config(), data)
    # The fine-tuning settings and the search do not change the pretrained model ...
    for same in ["training.iterations=4", "training.lr=0.01", "search.seeds=[0, 1, 2]",
                 "storage.path=elsewhere", "name=other"]:
        assert pretrain.pretrain_key(config(same), data) == key, same
    # ... the pretrain settings, the model, the batch and the split do.
    changed = {pretrain.pretrain_key(config(o), data) for o in [
        "pretrain.iterations=4", "pretrain.seed=1", "pretrain.loss=dice", "pretrain.lr=0.01",
        "model.n_filters=2", "training.batch_size=1", "model.activation=relu"]}
    assert len(changed) == 7 and key not in changed
    other_split = prepare_data(config("data.split.seed=3").data, cache_dir=cache)
    assert other_split.split != data.split
    assert pretrain.pretrain_key(config("data.split.seed=3"), other_split) != key


def test_stage_is_trained_once_then_reused(data, tmp_path, monkeypatch):
    cfg = config()
    uri, reused = pretrain.ensure_local(cfg, data, str(tmp_path))
    assert not reused
    assert uri == f"{tmp_path}/pretrain/{pretrain.pretrain_key(cfg, data)}/model.pt"
    stored = pretrain.load_state(uri)
    assert stored["loss"] == "dice_ce" and stored["iterations"] == 2
    assert set(stored["model"]) == set(build_model(cfg.model.vnet_kwargs()).state_dict())

    def boom(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(pretrain, "run_pretrain", boom)
    assert pretrain.ensure_local(config("training.iterations=4"), data, str(tmp_path)) == (
        uri, True)
    with pytest.raises(AssertionError, match="trained again"):  # another key: trains
        pretrain.ensure_local(config("pretrain.seed=5"), data, str(tmp_path))


def _weights(state):
    return {k: v.clone() for k, v in state.items()}


def test_fine_tuning_starts_from_the_initial_weights(data, tmp_path):
    cfg = config("training.lr=1e-12")  # Adam moves each weight by ~lr: it stays at init
    source = build_model(cfg.model.vnet_kwargs())
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.5)
    init = _weights(source.state_dict())
    spec = train.RunSpec.from_config(cfg, "hytver", 3)
    result = train.train_loop(spec, data, "cpu", init=init)
    for key, _ in source.named_parameters():  # (norm buffers do move: running statistics)
        torch.testing.assert_close(result.best_state[key], init[key], atol=1e-6, rtol=0)
    assert "0 missing" in result.init_report and "0 unexpected" in result.init_report
    # Without init the same seed starts elsewhere.
    plain = train.train_loop(spec, data, "cpu")
    assert not torch.allclose(plain.best_state["encoder.block_one.conv.0.weight"],
                              init["encoder.block_one.conv.0.weight"])


def test_coactseg_layout_checkpoint_file(data, tmp_path):
    cfg = config("training.lr=1e-12")
    source = build_model(cfg.model.vnet_kwargs())
    state = {f"module.{k}": v + 0.25 for k, v in source.state_dict().items()}
    path = tmp_path / "coactseg.pth"
    torch.save({"state_dict": state, "epoch": 7}, path)
    spec = train.RunSpec.from_config(cfg, "dice", 0)
    result = train.train_loop(spec, data, "cpu", init=path)
    assert f"load_pretrained({path})" in result.init_report
    assert "stripped prefixes: module." in result.init_report
    key = "encoder.block_one.conv.0.weight"
    torch.testing.assert_close(result.best_state[key], state[f"module.{key}"], atol=1e-6,
                               rtol=0)
    torch.save({"unrelated.weight": torch.zeros(3)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="no key of this checkpoint fits the V-Net"):
        train.train_loop(spec, data, "cpu", init=tmp_path / "bad.pt")


def test_train_cli_pretrains_once_and_takes_init_checkpoint(tmp_path, cache, capsys):
    cfg_path = tmp_path / "unit.yaml"
    cfg_path.write_text(yaml.safe_dump({**CONFIG, "storage": {"path": str(tmp_path / "st")}}))
    base = ["--config", str(cfg_path), "--cache", str(cache), "--no-progress"]
    assert train_cli.main([*base, "--out", str(tmp_path / "a")]) == 0
    assert "pretrained model (trained now)" in capsys.readouterr().out
    assert train_cli.main([*base, "--out", str(tmp_path / "b"), "--loss", "dice"]) == 0
    out = capsys.readouterr().out
    assert "pretrained model (reused)" in out and "0 missing" in out
    stored = next((tmp_path / "st" / "pretrain").glob("*/model.pt"))
    assert train_cli.main([*base, "--out", str(tmp_path / "c"), "--set", "pretrain=null",
                       "--init-checkpoint", str(stored)]) == 0
    assert f"load_pretrained({stored})" in capsys.readouterr().out


def test_train_cli_pretrains_into_object_storage_uri(tmp_path, cache, capsys):
    """With storage given as a URI (here file://, read and written through pyarrow as s3://
    would be), the stored stage is read back through the same layer."""
    cfg_path = tmp_path / "uri.yaml"
    cfg_path.write_text(yaml.safe_dump({**CONFIG,
                                        "storage": {"path": f"file://{tmp_path / 'st'}"}}))
    base = ["--config", str(cfg_path), "--cache", str(cache), "--no-progress"]
    assert train_cli.main([*base, "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert f"pretrained model (trained now): file://{tmp_path / 'st'}/pretrain/" in out
    assert "load_pretrained(<mapping>)" in out and "0 missing" in out
    assert list((tmp_path / "st" / "pretrain").glob("*/model.pt"))


@pytest.mark.parametrize("overrides, message", [
    (["model.init_checkpoint=x.pt"], r"pretrain: set either pretrain or model.init_checkpoint"),
    (["pretrain.loss=dcie"], r"pretrain\.loss: unknown loss 'dcie' \(did you mean 'dice'\?\)"),
    (["pretrain.hyperparameters={alpah: 0.3}", "pretrain.loss=tversky"],
     r"pretrain\.hyperparameters\.alpah: unknown hyperparameter of 'tversky' 'alpah'"),
    (["pretrain.hyperparameters={alpha: 3}", "pretrain.loss=tversky"],
     r"pretrain\.hyperparameters: 'tversky' rejects"),
    (["pretrain.eval_every=5"], r"pretrain\.eval_every: 5 exceeds iterations \(2\)"),
    (["pretrain.iterations=0"],
     r"pretrain\.iterations: Input should be greater than or equal to 1; got 0"),
    (["pretrain.epochs=3"], r"pretrain\.epochs: unknown key 'epochs'"),
])
def test_config_rules(overrides, message):
    with pytest.raises(ConfigError, match=message):
        config(*overrides)
