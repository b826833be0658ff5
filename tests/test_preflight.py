"""The sweep refuses bad paths before Ray starts, naming the path."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import yaml

from hytver_dist.sweep import main


def write_config(tmp_path: Path, storage: Path) -> Path:
    config = tmp_path / "pre.yaml"
    config.write_text(yaml.safe_dump({
        "name": "pre", "model": {"n_filters": 4},
        "data": {"synthetic": {"n_cases": 4, "size": "tiny"},
                 "split": {"preset": "random", "n_test": 1, "n_val": 1}},
        "training": {"iterations": 2, "patch_size": 32, "eval_every": 1,
                     "checkpoint_every": 1},
        "search": {"losses": ["dice"], "seeds": [0]},
        "storage": {"path": str(storage)}}))
    return config


def refused(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI; it must exit 2 without ever importing (let alone starting) Ray."""
    sys.modules.pop("ray", None)
    assert main(args) == 2
    assert "ray" not in sys.modules, "Ray was imported before the paths were checked"
    return capsys.readouterr().err


@pytest.fixture(autouse=True)
def _no_ray_in_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    # Restore whatever Ray modules other tests imported once this test is done.
    for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, name)


def test_missing_data_folder(tmp_path, capsys):
    missing = tmp_path / "does" / "not" / "exist"
    err = refused(["--config", str(write_config(tmp_path, tmp_path / "s")),
                   "--data", str(missing)], capsys)
    assert str(missing) in err and "not found" in err, err
    assert not (tmp_path / "s" / "pre").exists()


def test_empty_data_argument_and_empty_folder(tmp_path, capsys):
    config = str(write_config(tmp_path, tmp_path / "s"))
    err = refused(["--config", config, "--data", ""], capsys)
    assert "--data: empty path" in err, err
    empty = tmp_path / "empty"
    empty.mkdir()
    err = refused(["--config", config, "--data", str(empty)], capsys)
    assert str(empty) in err and "empty" in err, err


def test_folder_without_a_readable_case(tmp_path, synth_dataset, capsys):
    data = tmp_path / "data"
    shutil.copytree(synth_dataset, data)
    for volume in data.glob("syn*/flair_time01_on_middle_space.nii.gz"):
        volume.write_bytes(volume.read_bytes()[:100])  # truncated: unreadable
    err = refused(["--config", str(write_config(tmp_path, tmp_path / "s")),
                   "--data", str(data)], capsys)
    assert str(data) in err and "no readable case (4 tried" in err, err
    assert "flair_time01_on_middle_space.nii.gz" in err, err


def test_folder_with_no_case_folders(tmp_path, capsys):
    data = tmp_path / "data"
    (data / "notes").mkdir(parents=True)
    err = refused(["--config", str(write_config(tmp_path, tmp_path / "s")),
                   "--data", str(data)], capsys)
    assert str(data) in err and "no MSSEG-2 case folders" in err, err


def test_unwritable_storage(tmp_path, synth_dataset, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    storage = blocker / "storage"
    err = refused(["--config", str(write_config(tmp_path, storage)),
                   "--data", str(synth_dataset)], capsys)
    assert str(storage) in err and "not writable" in err, err
