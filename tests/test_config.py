"""Configuration layer: shipped files, error messages (file, key path, suggestion), cross-field
rules, loss hyperparameters checked by the losses, ``--set`` overrides, the JSON schema, the
documented defaults, and the import direction (the single-run path never imports Ray)."""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import yaml
from config_helpers import base
from pydantic import BaseModel, ValidationError

from hytver_dist.run import config as config_module
from hytver_dist.run.config import (
    SWEEPS_DIR,
    ConfigError,
    PretrainConfig,
    RunConfig,
    apply_overrides,
    loss_names,
)
from hytver_dist.sweep.config import ResourcesConfig, SweepConfig, json_schema

load_config = SweepConfig.load

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ["default", "paper_table1", "hytver_search", "nnunet_example"]


# ----------------------------------------------------------------------------- shipped files


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_sweeps_load_and_round_trip(name):
    cfg = load_config(SWEEPS_DIR / f"{name}.yaml")
    assert cfg.source.endswith(f"{name}.yaml")
    assert load_config(name).to_dict() == cfg.to_dict()  # bare names resolve to sweeps/
    again = load_config(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert again == cfg and again.source == "<dict>"


def test_defaults_and_conversions():
    cfg = load_config({"name": "x", "training": {"lr": "1e-3", "patch_size": 16},
                       "data": {"preprocessing": {"target_spacing": 0.75}}})
    assert cfg.training.lr == 1e-3  # YAML 1.1 reads 1e-3 as a string
    assert cfg.training.patch_size == (16, 16, 16)
    assert cfg.data.preprocessing.target_spacing == (0.75, 0.75, 0.75)
    assert cfg.data.split.n_test == 4 and cfg.data.synthetic is not None
    assert cfg.results_dir == "results/x/results"
    assert cfg.search.losses == loss_names()
    s3 = load_config({"name": "x", "storage": {"path": "s3://b/p/"}})
    assert s3.results_dir == "s3://b/p/x/results"
    spec = load_config(base(search__hyperparameters={"hytver": {
        "gamma": {"grid": [0.3, 0.5]}, "per_sample": {"choice": [True, False]}}},
        search__num_samples=2))
    kinds = {k: v.kind for k, v in spec.search.hyperparameters["hytver"].items()}
    assert kinds == {"gamma": "grid", "per_sample": "choice"}
    assert spec.to_dict()["search"]["hyperparameters"] == {
        "hytver": {"gamma": {"grid": [0.3, 0.5]}, "per_sample": {"choice": [True, False]}}}


def test_run_config_is_the_run_part_of_a_sweep_file():
    sweep, run = load_config("default"), RunConfig.load("default")
    assert type(run) is RunConfig and set(run.to_dict()) == set(RunConfig.model_fields)
    assert type(sweep.run) is RunConfig and sweep.run == run
    assert sweep.run.source == sweep.source == run.source
    # What Ray hands a worker: the run settings alone, pickled.
    again = pickle.loads(pickle.dumps(sweep.run))
    assert again == run and again.source == run.source
    # A single run skips the sweep's own sections, but never a misspelt key.
    assert set(SweepConfig.model_fields) - set(RunConfig.model_fields) == set(
        RunConfig.SWEEP_SECTIONS)
    with pytest.raises(ConfigError, match=r"^<dict>: trainig: unknown key 'trainig' \(did you "
                       r"mean 'training'\?\); valid: name, data, model, pretrain, training, "
                       r"storage$"):
        RunConfig.load(base(trainig={"iterations": 3}))


def test_validated_configs_never_change():
    cfg = load_config("default")
    with pytest.raises(ValidationError, match="frozen"):
        cfg.training.iterations = 5
    moved = cfg.with_value("data.path", "/elsewhere")
    assert moved.data.path == "/elsewhere" and cfg.data.path is None
    assert moved.training is cfg.training and moved.source == cfg.source


def test_synthetic_grid_comes_from_the_generator():
    from hytver_dist.data import synth

    for size, mm in synth.SIZES.items():
        shape = tuple(b // mm for b in synth.BOX_MM)
        too_big = (shape[0] // 16 + 1) * 16  # the first patch edge that does not fit
        with pytest.raises(ConfigError, match=re.escape(f"exceeds the synthetic grid {shape}")):
            load_config({"name": "x", "data": {"synthetic": {"size": size}},
                         "training": {"patch_size": too_big}})
    assert synth.grid_shape("tiny", (2.0, 2.0, 2.0)) == (86, 104, 84)  # resampled to 2 mm


# ----------------------------------------------------------------------------- errors

ERRORS = [
    (base(search__losses=["dice", "hytver", "dcie"]),
     r"^<dict>: search\.losses\[2\]: unknown loss 'dcie' \(did you mean 'dice'\?\); "
     r"valid: dice, tversky, "),
    (base(trainig={"iterations": 3}), r"^<dict>: trainig: unknown key 'trainig' \(did you mean "
     r"'training'\?\); valid: name, data, model, pretrain, training, "),
    (base(training={"iteratons": 3}), r"^<dict>: training\.iteratons: unknown key 'iteratons' "
     r"\(did you mean 'iterations'\?\); valid: iterations, batch_size, "),
    (base(data={"split": {"n_tset": 3}}), r"^<dict>: data\.split\.n_tset: unknown key .*"
     r"'n_test'"),
    (base(training__iterations="ten"),
     r"training\.iterations: Input should be a valid integer; got 'ten'"),
    (base(training__iterations=2.5),
     r"training\.iterations: Input should be a valid integer; got 2\.5"),
    (base(training__iterations=0),
     r"training\.iterations: Input should be greater than or equal to 1; got 0"),
    (base(training__amp="yes"), r"training\.amp: Input should be a valid boolean; got 'yes'"),
    (base(training__lr=True), r"training\.lr: expected a number; got True"),
    (base(training__lr=".nan"), r"training\.lr: "),
    (base(training__lr=0), r"training\.lr: Input should be greater than 0"),
    (base(training__backend="cuda"), r"training\.backend: Input should be 'auto', 'fused' or "
     r"'reference'; got 'cuda'"),
    (base(training__checkpoint_every=15), r"training\.checkpoint_every: must be a multiple of "
     r"eval_every \(10\); got 15"),
    (base(training__eval_every=30), r"training\.eval_every: 30 exceeds iterations \(20\)"),
    (base(training__patch_size=[32, 32]), r"training\.patch_size: expected 3 values; got 2"),
    (base(training__patch_size=64), r"training\.patch_size\[0\]: 64 exceeds the synthetic "
     r"grid \(43, 52, 42\) \(size 'tiny' at native mm\)"),
    (base(training__patch_size=[32, 40, 32]), r"training\.patch_size\[1\]: must be a positive "
     r"multiple of 16"),
    (base(training__val_patch_overlap=1.0),
     r"training\.val_patch_overlap: Input should be less than 1"),
    (base(model__dropout=-0.1), r"model\.dropout: Input should be greater than or equal to 0"),
    (base(model__activation="gelu"), r"model\.activation: Input should be 'leaky_relu' or 'relu'"),
    (base(data__synthetic={"n_negative": 13}), r"data\.synthetic\.n_negative: must be in "
     r"\[0, n_cases=12\]"),
    (base(data__synthetic={"n_cases": 2}),
     r"data\.synthetic\.n_cases: Input should be greater than or equal to 3"),
    (base(data__synthetic={"size": "huge"}), r"data\.synthetic\.size: Input should be 'tiny', "
     r"'small' or 'full'"),
    (base(data__preprocessing={"target_spacing": [1, 0, 1]}),
     r"data\.preprocessing\.target_spacing\[1\]: Input should be greater than 0"),
    (base(search__hyperparameters={"hytver": {"alpha": {"uniform": [0.9, 0.1]}}}),
     r"search\.hyperparameters\.hytver\.alpha\.uniform: needs low < high; got \[0\.9, 0\.1\]"),
    (base(search__hyperparameters={"hytver": {"smooth": {"loguniform": [0, 1]}}}),
     r"search\.hyperparameters\.hytver\.smooth\.loguniform\[0\]: Input should be greater "
     r"than 0; got 0"),
    (base(search__hyperparameters={"hytver": {"alpha": {"normal": [0, 1]}}}),
     r"search\.hyperparameters\.hytver\.alpha: expected a value, a list \(grid\) or one of"),
    (base(search__hyperparameters={"hytver": {"alpha": {"choice": [0.5, 0.5]}}}),
     r"search\.hyperparameters\.hytver\.alpha\.choice\[1\]: duplicate value 0\.5"),
    (base(search__hyperparameters={"hytver": {"alpha": [0.5, {"a": 1}]}}),
     r"search\.hyperparameters\.hytver\.alpha\.grid\[1\]: expected a number, string or "
     r"bool; got \{'a': 1\}"),
    (base(search__hyperparameters={"hytver": {"alpha": {"uniform": [0.1]}}}),
     r"search\.hyperparameters\.hytver\.alpha\.uniform: Tuple should have at least 2 items "
     r"after validation, not 1; got \[0\.1\]"),
    (base(search__hyperparameters={"hytver": {"alpah": 0.5}}),
     r"search\.hyperparameters\.hytver\.alpah: unknown hyperparameter of 'hytver' 'alpah' "
     r"\(did you mean 'alpha'\?\)"),
    (base(search__hyperparameters={"hytver": {"backend": "fused"}}),
     r"search\.hyperparameters\.hytver\.backend: unknown hyperparameter of 'hytver'"),
    (base(search__hyperparameters={"ce": {"alpha": 0.5}}, search__losses=["ce"]),
     r"search\.hyperparameters\.ce\.alpha: 'ce' takes no hyperparameters"),
    (base(search__hyperparameters={"dcie": {}}),
     r"search\.hyperparameters\.dcie: unknown loss 'dcie' \(did you mean 'dice'\?\)"),
    (base(search__hyperparameters={"tversky": {"alpha": 0.5}}),
     r"search\.hyperparameters\.tversky: loss 'tversky' is not in search\.losses "
     r"\(dice, hytver\)"),
    (base(search__num_samples=4), r"search\.num_samples: 4 has no effect: no hyperparameter has "
     r"a distribution"),
    (base(search__seeds=[0, 1, 0]), r"search\.seeds\[2\]: duplicate seed 0"),
    (base(search__seeds=[]),
     r"search\.seeds: Tuple should have at least 1 item after validation, not 0; got \[\]"),
    (base(search__losses="dice"), r"search\.losses: expected 'all' or a non-empty list"),
    (base(search__losses=["dice", "dice"]), r"search\.losses\[1\]: duplicate loss 'dice'"),
    (base(search__scheduler={"type": "asha", "grace_period": 5}),
     r"search\.scheduler\.grace_period: 5 exceeds max_t \(2 = number of evaluations\)"),
    (base(search__scheduler={"type": "asha", "max_t": 2, "grace_period": 3}),
     r"search\.scheduler\.max_t: 2 < grace_period \(3\)"),
    (base(search__search_alg="hyperopt"),
     r"search\.search_alg: Input should be 'random' or 'optuna'"),
    (base(search__seeds_per_trial=0),
     r"search\.seeds_per_trial: Input should be greater than or equal to 1"),
    (base(search__seeds_per_trial=2, search__scheduler={"type": "asha"}),
     r"search\.seeds_per_trial: must be 1 with scheduler: asha \(it would compare one seed"),
    (base(search__seeds_per_trial=2, search__search_alg="optuna", search__num_samples=4),
     r"search\.seeds_per_trial: must be 1 with search_alg: optuna"),
    (base(data__split={"preset": "coactseg"}),
     r"data\.split\.preset: 'coactseg' selects MSSEG-2 case IDs and needs data\.path"),
    (base(data__path="/d", data__split={"preset": "coactseg", "n_test": 8}),
     r"data\.split\.n_test: must be null with preset 'coactseg'"),
    (base(data__path="/d", data__split={"preset": "coactseg", "n_val": 32}),
     r"data\.split\.n_val: must be < 32"),
    (base(data__path="/d", data__synthetic={"n_cases": 5}),
     r"data\.synthetic: set only when data\.path is null"),
    (base(data__split={"n_test": 6, "n_val": 6}),
     r"data\.split: n_test \+ n_val = 12 leaves no training case out of synthetic\.n_cases = 12"),
    (base(data__split={"n_val": 0}),
     r"data\.split\.n_val: Input should be greater than or equal to 1"),
    (base(resources__cpus_per_worker=0),
     r"resources\.cpus_per_worker: Input should be greater than 0"),
    (base(resources={"use_gpu": True, "gpus_per_worker": 1.5}),
     r"resources\.gpus_per_worker: must be a fraction in \(0, 1\] or a whole number; got 1\.5"),
    (base(resources__num_workers=0),
     r"resources\.num_workers: Input should be greater than or equal to 1"),
    (base(resources__max_failures=-2),
     r"resources\.max_failures: Input should be greater than or equal to -1"),
    (base(storage__path=""), r"storage\.path: String should have at least 1 character; got ''"),
    (base(report__reference_loss="hytvr"), r"report\.reference_loss: unknown loss 'hytvr' "
     r"\(did you mean 'hytver'\?\)"),
    (base(report__confidence=1.0), r"report\.confidence: Input should be less than 1"),
    (base(name="my sweep/2024"), r"^<dict>: name: String should match pattern '\^\[A-Za-z0-9\]"),
    ({"search": {"losses": ["dice"]}}, r"^<dict>: name: Field required"),
    (base(model=[1, 2]), r"^<dict>: model: Input should be a valid dictionary"),
]


@pytest.mark.parametrize(("cfg", "pattern"), ERRORS, ids=[p[:40] for _, p in ERRORS])
def test_validation_errors(cfg, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(cfg)


@pytest.mark.parametrize(("name", "value", "fragment"), [
    ("alpha", 1.5, "alpha must be in"),
    ("gamma", {"uniform": [0.2, 1.5]}, "gamma"),   # the upper end is checked too
    ("smooth", -1.0, "smooth"),
    ("beta", {"grid": [0.5, 2.0]}, "beta"),
])
def test_hyperparameter_values_are_checked_by_the_loss(name, value, fragment):
    """The loss class decides what it accepts: the error carries its message and the path."""
    with pytest.raises(ConfigError) as exc:
        load_config(base(search__hyperparameters={"hytver": {name: value}}))
    msg = str(exc.value)
    assert msg.startswith(f"<dict>: search.hyperparameters.hytver.{name}: 'hytver' rejects ")
    assert fragment in msg
    ok = load_config(base(search__hyperparameters={"hytver": {name: 0.5}}))
    assert ok.search.hyperparameters["hytver"][name].values == (0.5,)


def test_every_problem_is_listed():
    with pytest.raises(ConfigError) as exc:
        load_config(base(training={"iterations": "x", "batch_size": 0}, modle={}))
    lines = str(exc.value).splitlines()
    assert sorted(line.split(": ")[1] for line in lines) == [
        "modle", "training.batch_size", "training.iterations"]
    assert all(line.startswith("<dict>: ") for line in lines)


def test_error_names_the_file(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("name: x\nsearch:\n  losses: [dice, tversky, dcie]\n")
    with pytest.raises(ValueError) as exc:
        load_config(path)
    assert str(exc.value).startswith(f"{path}: search.losses[2]: unknown loss 'dcie'")
    assert str(exc.value).endswith(", ".join(loss_names()))
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=re.escape(f"{bad}: invalid YAML")):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"nope\.yaml: file not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: <top level>: expected a mapping"):
        load_config(tmp_path / "list.yaml")
    with pytest.raises(ConfigError,
                       match=r"^run\.json: training\.amp: Input should be a valid boolean"):
        load_config(base(training__amp="x"), source="run.json")


def test_names_come_from_the_loss_registry(monkeypatch):
    class FakeDice:
        @classmethod
        def hyperparameters(cls):
            return ("smooth", "backend")

    class FakeHyTver:
        @classmethod
        def hyperparameters(cls):
            return ("alpha", "beta", "backend")

    fake = types.SimpleNamespace(LOSSES={"dice": FakeDice, "hytver": FakeHyTver},
                                 get_loss=lambda name, **kw: None)
    monkeypatch.setattr(config_module, "_losses", lambda: fake)
    assert loss_names() == ("dice", "hytver")
    with pytest.raises(ConfigError, match=r"unknown hyperparameter of 'dice' 'backend'; "
                       r"valid: smooth$"):  # backend is training.backend
        load_config(base(search__hyperparameters={"dice": {"backend": "fused"}}))
    with pytest.raises(ConfigError, match=r"unknown loss 'tversky' .*; valid: dice, hytver$"):
        load_config(base(search__losses=["tversky"]))
    with pytest.raises(ConfigError, match=r"unknown hyperparameter of 'hytver' 'gamma'"):
        load_config(base(search__hyperparameters={"hytver": {"gamma": 0.5}}))
    cfg = load_config({"name": "x", "report": {"reference_loss": "dice"}})
    assert cfg.search.losses == ("dice", "hytver")


# ----------------------------------------------------------------------------- overrides


def test_set_overrides_any_key_with_yaml_values(tmp_path):
    cfg = load_config("default", ["training.iterations=50", "training.eval_every=10",
                                  "training.checkpoint_every=10", "search.seeds=[3, 4]",
                                  "training.amp=true", "data.preprocessing.target_spacing=4",
                                  "search.hyperparameters.hytver.alpha={uniform: [0.2, 0.8]}",
                                  "search.num_samples=2"])
    assert (cfg.training.iterations, cfg.training.eval_every) == (50, 10)
    assert cfg.search.seeds == (3, 4) and cfg.training.amp is True
    assert cfg.data.preprocessing.target_spacing == (4.0, 4.0, 4.0)
    assert cfg.search.hyperparameters["hytver"]["alpha"].values == (0.2, 0.8)
    assert cfg.source.endswith("default.yaml with --set training.iterations=50 "
                               "training.eval_every=10 training.checkpoint_every=10 "
                               "search.seeds=[3, 4] training.amp=true "
                               "data.preprocessing.target_spacing=4 "
                               "search.hyperparameters.hytver.alpha={uniform: [0.2, 0.8]} "
                               "search.num_samples=2")
    untouched = load_config("default")
    assert cfg.model == untouched.model  # only the named keys change


def test_set_errors_name_the_file_the_override_and_the_key():
    with pytest.raises(ConfigError) as exc:
        load_config("default", ["trainig.iterations=5"])
    assert re.match(r"^\S*default\.yaml with --set trainig\.iterations=5: trainig: unknown key "
                    r"'trainig' \(did you mean 'training'\?\)", str(exc.value))
    with pytest.raises(ConfigError, match=r"--set training\.iterations=x: training\.iterations: "
                       r"Input should be a valid integer; got 'x'"):
        load_config("default", ["training.iterations=x"])
    # Cross-field rules see the result of every override together.
    with pytest.raises(ConfigError, match=r"training\.eval_every: 50 exceeds iterations \(5\)"):
        load_config("default", ["training.iterations=5"])
    for bad in ("training.iterations", "=5", "training..x=1"):
        with pytest.raises(ConfigError, match=r"expected KEY=VALUE"):
            load_config("default", [bad])
    with pytest.raises(ConfigError, match=r"training\.iterations is not a section"):
        load_config("default", ["training.iterations.x=1"])


def test_apply_overrides_does_not_touch_its_input():
    data = {"name": "x", "training": {"iterations": 5}}
    out = apply_overrides(data, ["training.iterations=7", "model.n_filters=8"])
    assert data == {"name": "x", "training": {"iterations": 5}}
    assert out == {"name": "x", "training": {"iterations": 7}, "model": {"n_filters": 8}}


# ----------------------------------------------------------------------------- schema, docs


def test_json_schema_describes_every_section():
    schema = json_schema()
    assert schema["required"] == ["name"]
    assert set(schema["properties"]) == set(SweepConfig.model_fields)
    defs = schema["$defs"]
    assert defs["TrainingConfig"]["additionalProperties"] is False
    assert defs["TrainingConfig"]["properties"]["iterations"]["minimum"] == 1
    assert defs["TrainingConfig"]["properties"]["patch_size"]["prefixItems"][0]["type"] == \
        "integer"
    assert defs["SearchConfig"]["properties"]["losses"]["anyOf"][0]["const"] == "all"
    spec = defs["SearchConfig"]["properties"]["hyperparameters"]["additionalProperties"]
    spec = spec["additionalProperties"]["oneOf"]  # per loss, per hyperparameter
    assert spec[0] == {"$ref": "#/$defs/Fixed"}
    assert spec[1]["anyOf"][0]["type"] == "array"  # a list is a grid
    assert set(defs["Uniform"]["properties"]) == {"uniform"}
    assert defs["Uniform"]["additionalProperties"] is False
    json.dumps(schema)  # plain JSON


def test_every_key_is_documented():
    """docs/sweeps.md is where the keys are explained (the schema carries types and bounds)."""
    doc = (ROOT / "docs" / "sweeps.md").read_text()

    def keys(model, prefix=""):
        for name, field in model.model_fields.items():
            yield prefix + name
            for kind in (field.annotation, *getattr(field.annotation, "__args__", ())):
                if isinstance(kind, type) and issubclass(kind, BaseModel):
                    yield from keys(kind, f"{prefix}{name}.")

    def section(top: str) -> str:  # "### `data`" up to the next heading of its level or above
        start = doc.index(f"\n### `{top}`")
        return doc[start:min(i for i in (doc.find("\n### ", start + 1),
                                         doc.find("\n## ", start + 1), len(doc)) if i > 0)]

    missing = [k for k in keys(SweepConfig) if not any(
        form.format(k.rsplit(".", 1)[-1]) in section(k.split(".")[0])
        for form in ("`{}`", ".{}`", "`{}."))]
    assert not missing  # each key named in its own section


def test_print_schema_cli():
    out = subprocess.run([sys.executable, "-m", "hytver_dist.sweep", "--print-schema"],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    assert json.loads(out.stdout) == json_schema()


def test_documented_defaults_match_the_models():
    doc = (ROOT / "docs" / "sweeps.md").read_text()
    block = doc.split("## All keys and their defaults")[1].split("```yaml")[1].split("```")[0]
    documented = load_config(yaml.safe_load(textwrap.dedent(block)))
    defaults = load_config({"name": "my-sweep"})
    for section in ["data", "model", "pretrain", "training", "resources", "storage", "report"]:
        assert getattr(documented, section) == getattr(defaults, section), section
    assert documented.search.model_copy(update={"hyperparameters": {}}) == defaults.search
    for key in ResourcesConfig.model_fields:
        assert f"`{key}`" in doc, key
    # The commented pretrain example lists that section's defaults.
    example = block.split("# pretrain:")[1].split("\n", 2)
    example = yaml.safe_load(example[0] + " " + example[1].lstrip("# "))
    assert PretrainConfig(**example) == PretrainConfig()
    assert set(example) == set(PretrainConfig.model_fields)
    for key in PretrainConfig.model_fields:
        assert f"`pretrain.{key}`" in doc, key


def test_single_run_path_does_not_import_ray():
    code = ("import sys, hytver_dist.train, hytver_dist.evaluate, hytver_dist.run.config; "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
