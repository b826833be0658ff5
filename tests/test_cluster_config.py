"""cluster.yaml / cluster.local.yaml pass Ray's offline launcher validation; broken copies fail.

prepare_config + validate_config is what `ray up` runs before touching a cloud;
it is a private API, so Ray is pinned (2.60).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml
from jsonschema import ValidationError
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parent.parent
AWS, LOCAL = ROOT / "cluster.yaml", ROOT / "cluster.local.yaml"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def check(cfg: dict) -> dict:
    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    return prepared


@pytest.mark.parametrize("path", [AWS, LOCAL], ids=["aws", "local"])
def test_cluster_yaml_validates(path):
    prepared = check(load(path))
    assert prepared["head_node_type"] in prepared["available_node_types"]
    setup = " ".join(prepared["setup_commands"])
    assert '"ray[default,tune,train]==2.60.0"' in setup and "torch==" in setup
    assert "pip install -q --no-build-isolation -e ." in setup
    assert "." in prepared["file_mounts"].values()  # the repository is copied to every node
    assert ".venv" in prepared["rsync_exclude"]


def test_aws_layout():
    cfg = load(AWS)
    assert cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    # The head holds the trial drivers and never trains.
    assert head["resources"]["TRAIN_DRIVER"] >= 1 and head["resources"]["CPU"] == 0
    assert "GPU" not in head["resources"]
    workers = [t for name, t in types.items() if name != cfg["head_node_type"]]
    assert workers and all(t["resources"].get("GPU", 0) > 0 for t in workers)
    assert all("TRAIN_DRIVER" not in t["resources"] for t in workers)
    assert cfg["docker"]["image"].startswith("rayproject/ray:2.60.0-py311")
    assert any("/mnt/efs" in c for c in cfg["initialization_commands"])  # shared storage
    assert "ray start --head" in " ".join(cfg["head_start_ray_commands"])


def test_local_layout():
    cfg = load(LOCAL)
    # prepare_local aborts on these; it builds its own node type.
    assert not {"available_node_types", "head_node", "worker_nodes"} & set(cfg)
    assert cfg["provider"]["type"] == "local"
    assert check(cfg)["available_node_types"].keys() == {"local.cluster.node"}
    head, worker = cfg["head_start_ray_commands"], cfg["worker_start_ray_commands"]
    for cmds in (head, worker):
        start = [c for c in cmds if " start " in c]
        assert start and all("RAY_AUTH_MODE=token" in c for c in start)  # matching auth mode
        assert all(re.search(r"(^|\s)/\S+/bin/ray (start|stop)", c) for c in cmds)  # absolute
    resources = re.search(r"--resources='(\{.*?\})'", " ".join(head)).group(1)
    assert json.loads(resources)["TRAIN_DRIVER"] >= 1
    assert "--num-cpus=0" in head[-1] and "--num-gpus=0" in head[-1]
    text = LOCAL.read_text()
    assert "RAY_UP_enable_autoscaler_v2=0" in text and "--node-ip-address" in text


def _broken_aws() -> list[tuple[str, dict, type[Exception], str]]:
    cfg = load(AWS)
    typo = copy.deepcopy(cfg)
    typo["max_workerz"] = typo.pop("max_workers")
    frac = copy.deepcopy(cfg)
    frac["available_node_types"]["gpu_a10g_x4"]["resources"]["GPU"] = 0.5
    head = copy.deepcopy(cfg)
    head["head_node_type"] = "cpu_head"
    too_few = copy.deepcopy(cfg)
    too_few["available_node_types"]["gpu_a10g_x4"]["min_workers"] = 4
    too_few["max_workers"] = 2
    return [
        ("unknown key", typo, ValidationError, "Additional properties are not allowed"),
        ("fractional resource", frac, ValidationError, "0.5 is not of type 'integer'"),
        ("unknown head type", head, ValueError, "head_node_type"),
        ("max_workers < sum(min_workers)", too_few, ValueError, "smaller than the sum"),
    ]


@pytest.mark.parametrize(("what", "cfg", "exc", "msg"), _broken_aws(),
                         ids=[b[0] for b in _broken_aws()])
def test_broken_aws_copy_fails(what, cfg, exc, msg):
    with pytest.raises(exc, match=re.escape(msg)):
        check(cfg)


def test_broken_local_copies_fail():
    cfg = load(LOCAL)
    # Unquoted resources JSON: YAML reads the command as a mapping.
    unquoted = copy.deepcopy(cfg)
    plain = "- ray start --head --resources='{\"TRAIN_DRIVER\": 8}'"
    unquoted["head_start_ray_commands"][-1] = yaml.safe_load(plain)[0]
    assert isinstance(unquoted["head_start_ray_commands"][-1], dict)
    with pytest.raises(ValidationError, match="is not of type 'string'"):
        check(unquoted)
    import click

    with_types = copy.deepcopy(cfg)
    with_types["available_node_types"] = {"gpu": {"resources": {"GPU": 1}, "node_config": {}}}
    with pytest.raises(click.ClickException):
        check(with_types)
    no_ips = copy.deepcopy(cfg)
    del no_ips["provider"]["worker_ips"]
    with pytest.raises(click.ClickException):
        check(no_ips)
