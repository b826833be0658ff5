"""Segment new scans with a trained V-Net: one NIfTI mask per case on the scan's own grid, and a
CSV of predicted lesion counts and volumes, through the code of ``hytver_dist.evaluate``.

``python -m hytver_dist.predict --model runs/hytver-s0 --scans new_patients --out masks``
(MSSEG-2 case folders or an nnU-Net ``imagesTs`` folder). Inputs, steps and outputs:
docs/inference.md; flags: docs/cli.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from torch import nn

from ..data import (
    CaseFiles,
    DataError,
    discover_cases,
    load_case,
    preprocess_case,
)
from ..metrics import label_lesions, min_lesion_size_voxels
from ..model import CheckpointError
from .config import ConfigError, RunConfig, add_override_argument
from .evaluate import (
    PREDICTIONS_CSV,
    load_trained,
    predict_case,
    run_config,
    save_prediction,
    save_predictions_table,
)
from .prepare import preprocess_config

# The network input built from a case's two scans (hytver_dist.run.train.case_image):
# baseline, follow-up and their difference.
INPUT_CHANNELS = 3
# nnU-Net's imagesTs layout: one folder of <case>_<channel>.nii.gz; channel 0000 is the
# baseline and 0001 the follow-up (MSSEG-2's time points 1 and 2).
NNUNET_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})\.nii\.gz$")
NNUNET_CHANNELS = (0, 1)


def nnunet_cases(root: Path) -> list[CaseFiles]:
    """The cases of an nnU-Net ``imagesTs`` folder; a case without exactly the channels 0000
    and 0001 is refused, naming the case and the file."""
    groups: dict[str, dict[int, Path]] = {}
    for path in sorted(root.glob("*.nii.gz")):
        if m := NNUNET_FILE.match(path.name):
            groups.setdefault(m["case"], {})[int(m["channel"])] = path
    cases = []
    for case, channels in groups.items():
        extra = [channels[c] for c in sorted(channels) if c not in NNUNET_CHANNELS]
        missing = [c for c in NNUNET_CHANNELS if c not in channels]
        if extra or missing:
            named = extra[0] if extra else root / f"{case}_{missing[0]:04d}.nii.gz"
            raise DataError(f"case {case}: {len(channels)} channel files "
                            f"({', '.join(p.name for p in channels.values())}); the model takes "
                            f"2 scans: {case}_0000.nii.gz (baseline) and {case}_0001.nii.gz "
                            f"(follow-up)", named)
        cases.append(CaseFiles(id=case, dir=root, baseline=channels[0], followup=channels[1]))
    return cases


def scan_cases(root: str | Path) -> list[CaseFiles]:
    """The cases under ``root``: an nnU-Net ``imagesTs`` folder, or MSSEG-2 case folders (their
    ground truth, if any, left out)."""
    root = Path(root)
    if root.is_dir() and any(NNUNET_FILE.match(p.name) for p in root.glob("*.nii.gz")):
        return nnunet_cases(root)
    return [dataclasses.replace(f, mask=None, experts=()) for f in discover_cases(root)]


def check_channels(case: CaseFiles, in_channels: int, model_file: str | Path) -> None:
    """Refuse a case whose scans cannot make the model's input: a scan holding several volumes
    (a 4-D file), or a model that takes another number of input channels."""
    for path in (case.baseline, case.followup):
        try:
            shape = nib.load(path).shape
        except Exception as exc:  # nibabel and gzip raise many types for a corrupt header
            raise DataError(f"case {case.id}: unreadable scan ({type(exc).__name__}: {exc})",
                            path) from exc
        if len(shape) > 3 and int(np.prod(shape[3:])) > 1:
            raise DataError(f"case {case.id}: the scan holds {int(np.prod(shape[3:]))} "
                            f"channels (shape {tuple(shape)}); the model takes one 3-D volume "
                            f"per time point", path)
    if in_channels != INPUT_CHANNELS:
        raise DataError(f"case {case.id}: the model {model_file} takes {in_channels} input "
                        f"channels, but the scans {case.baseline} and {case.followup} give "
                        f"{INPUT_CHANNELS} ([baseline, follow-up, follow-up - baseline])",
                        case.dir)


def lesion_row(case_id: str, mask: np.ndarray, spacing: tuple[float, float, float]) -> dict:
    """Predicted lesions of one case, counted as the MSSEG-2 evaluation counts them
    (6-connected components of more than 3 mm^3, :mod:`hytver_dist.metrics.detection`)."""
    voxel_mm3 = float(np.prod(spacing))
    labels, n = label_lesions(mask, 6, min_lesion_size_voxels(spacing))
    return {"case": case_id, "lesions": n,
            "lesion_volume_mm3": float(np.count_nonzero(labels)) * voxel_mm3,
            "predicted_voxels": int(np.count_nonzero(mask)),
            "predicted_volume_mm3": float(np.count_nonzero(mask)) * voxel_mm3}


def predict_cases(model: nn.Module, cases: list[CaseFiles], cfg: RunConfig, out: Path, *,
                  overlap: float | None = None, model_file: str | Path = "the model"
                  ) -> pd.DataFrame:
    """Masks of ``cases`` as ``<out>/<case>.nii.gz`` and their lesion table, also written to
    ``<out>/predictions.csv`` (with the cases done so far when a case fails)."""
    in_channels = int(getattr(model, "in_channels", INPUT_CHANNELS))
    for case in cases:  # every case checked before the first one is computed
        check_channels(case, in_channels, model_file)
    config = preprocess_config(cfg.data)
    rows = []
    try:
        for case in cases:
            scan = load_case(case)
            pre = preprocess_case(scan, config)
            _, mask = predict_case(model, pre, cfg.training, overlap=overlap)
            path = save_prediction(mask, pre, out)
            rows.append({**lesion_row(case.id, mask, scan.spacing), "mask": path.name})
    finally:
        table = save_predictions_table(rows, ["case", "lesions", "lesion_volume_mm3",
                                              "predicted_voxels", "predicted_volume_mm3",
                                              "mask"], out)
    return table


def model_files(path: Path) -> tuple[Path, Path | None]:
    """(checkpoint, the run.json beside it or None) of ``--model``."""
    ckpt = path / "best_model.pt" if path.is_dir() else path
    if not ckpt.is_file():
        raise SystemExit(f"error: {ckpt}: not found (--model takes a run directory of "
                         "hytver_dist.train or a best_model.pt)")
    run_file = ckpt.parent / "run.json"
    return ckpt, run_file if run_file.is_file() else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hytver_dist.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path,
                        help="run directory of hytver_dist.train, or a best_model.pt")
    parser.add_argument("--scans", required=True, type=Path,
                        help="folder of case folders (MSSEG-2 layout, no labels needed) or an "
                        "nnU-Net imagesTs folder")
    parser.add_argument("--out", required=True, type=Path,
                        help="output folder: <case>.nii.gz masks and predictions.csv")
    parser.add_argument("--config", help="sweep YAML (path or name) for the preprocessing and "
                        "sliding window when the checkpoint has no run.json beside it")
    parser.add_argument("--overlap", type=float, help="sliding-window overlap (default: the "
                        "config's training.val_patch_overlap)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_override_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ckpt, run_file = model_files(args.model)
    if run_file is not None:
        cfg, _ = run_config(run_file, args.overrides)
    elif args.config is None:
        raise SystemExit(f"error: {ckpt.parent}: no run.json beside {ckpt.name}; pass "
                         "--config with the sweep file the model was trained with")
    else:
        try:
            cfg = RunConfig.load(args.config, args.overrides)
        except ConfigError as exc:
            raise SystemExit(f"error: {exc}") from None
    try:
        model, payload = load_trained(ckpt, args.device)
        if "dataset" in payload:  # trained on an nnU-Net dataset: its channels and classes
            from .predict_nnunet import predict_nnunet

            table = predict_nnunet(model, payload, cfg, args.scans, args.out,
                                   overlap=args.overlap)
        else:
            cases = scan_cases(args.scans)
            table = predict_cases(model, cases, cfg, args.out, overlap=args.overlap,
                                  model_file=ckpt)
    except (CheckpointError, DataError) as exc:
        raise SystemExit(f"error: {exc}") from None
    print(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    print(f"\n{len(table)} cases -> {args.out / PREDICTIONS_CSV}, masks in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
