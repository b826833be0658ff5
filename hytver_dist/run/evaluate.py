"""Evaluate a trained V-Net on whole volumes: sliding-window predictions saved as NIfTI with the
input's affine, a per-case metrics CSV and a summary.

``python -m hytver_dist.evaluate --run results/<name>/train/hytver-seed0`` evaluates that run's
``best_model.pt`` on its test cases (the split recorded at training time). Metrics are computed
on each case's native grid in mm (hytver_dist.metrics); the ``*_vox`` distances are computed on
the preprocessed grid in voxels, the paper's Table I units (its HD and ASD columns) when that
grid is the paper's 0.5 x 0.75 x 0.75 mm.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from .. import files, metrics
from ..data import DataError, PreprocessedCase, load_case, save_mask, to_original_grid
from ..metrics import surface
from ..model import CheckpointError, build_model, load_checkpoint
from .config import ConfigError, ModelConfig, RunConfig, TrainingConfig, add_override_argument
from .inference import sliding_window_predict, sliding_window_probabilities
from .prepare import DatasetInfo, PreparedData, prepare_data
from .train import case_image, class_masks, hard_prediction, loss_activation, patch_edge


def predict_case(model: nn.Module, case: PreprocessedCase, training: TrainingConfig, *,
                 overlap: float | None = None,
                 threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """The binary prediction of one preprocessed case: ``(on the preprocessed grid, on the
    input file's grid)``. ``evaluate`` and ``predict`` both go through here, so a scan gets
    the same sliding window (``training.patch_size`` windows, ``overlap`` or the config's
    ``training.val_patch_overlap``) and threshold in both."""
    overlap = training.val_patch_overlap if overlap is None else overlap
    probs = sliding_window_probabilities(model, case_image(case), patch=patch_edge(training),
                                         overlap=overlap).numpy()
    pred = probs > threshold
    return pred, to_original_grid(pred.astype(np.uint8), case.meta, is_mask=True) > 0


def save_prediction(mask: np.ndarray, case: PreprocessedCase, directory: Path) -> Path:
    """``<directory>/<case id>.nii.gz``: a mask on the input file's grid, with its affine."""
    directory.mkdir(parents=True, exist_ok=True)
    return save_mask(mask.astype(np.uint8), case.meta.original_affine,
                     directory / f"{case.id}.nii.gz")


def predict_labels(model: nn.Module, case: Any, training: TrainingConfig,
                   dataset: DatasetInfo, activation: str, *,
                   overlap: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The prediction of one case of a dataset of classes or regions: ``(on the preprocessed
    grid, label map on the input file's grid)``. Classes: the most probable class (uint8
    label map, then (D, H, W)); regions: (R, D, H, W) masks above 0.5, each mapped back so
    its lesions survive, painted into a label map in ``regions_class_order`` on the input
    grid."""
    from ..data.nnunet import regions_to_label_map
    from ..data.nnunet_prep import labels_to_original_grid

    overlap = training.val_patch_overlap if overlap is None else overlap
    probs = sliding_window_predict(model, case_image(case), patch=patch_edge(training),
                                   overlap=overlap, activation=activation)
    pred = hard_prediction(probs, dataset, activation)
    if dataset.kind == "labels":
        return pred, labels_to_original_grid(pred, case.meta)
    native = np.stack([to_original_grid(m, case.meta, is_mask=True) for m in pred])
    return pred, regions_to_label_map(native, dataset.regions_class_order)


def save_label_map(labels: np.ndarray, case: Any, directory: Path) -> Path:
    """``<directory>/<case id>.nii.gz``: a uint8 label map with the input file's affine."""
    import nibabel as nib

    directory.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(labels, np.uint8), case.meta.original_affine)
    img.set_data_dtype(np.uint8)
    img.header.set_slope_inter(1.0, 0.0)
    path = directory / f"{case.id}.nii.gz"
    nib.save(img, path)
    return path


def _scores(pred_native: np.ndarray, gt_native: np.ndarray, spacing: Sequence[float],
            pred_vox: np.ndarray, gt_vox: np.ndarray) -> dict[str, float]:
    """Every metric of :func:`hytver_dist.metrics.evaluate_case` on the native grid in mm, the
    surface distances in voxels of the preprocessed grid (``*_vox``: the paper's Table I units
    when that grid is 0.5 x 0.75 x 0.75 mm; all four from one grid, never mixed) and both
    grids' diagonals (the report's distance penalty of an empty prediction)."""
    scores = metrics.evaluate_case(pred_native, gt_native, spacing=spacing, voxel_units=False)
    vox = surface.summarize(pred_vox, gt_vox, (1.0, 1.0, 1.0))
    scores.update({f"{k}_vox": v for k, v in vox.items()})
    scores["diagonal_mm"] = float(np.linalg.norm(np.multiply(gt_native.shape, spacing)))
    scores["diagonal_vox"] = float(np.linalg.norm(pred_vox.shape))
    return scores


def _evaluate_classes(model: nn.Module, data: PreparedData, training: TrainingConfig,
                      part: str, overlap: float | None, predictions_dir: Path | None,
                      extra: dict[str, Any] | None, activation: str) -> pd.DataFrame:
    """:func:`evaluate_model` for datasets of classes or regions: one row per (case, class)."""
    import nibabel as nib

    from ..data import read_volume

    ds, rows = data.dataset, []
    for case in data.part(part):
        pred, native_labels = predict_labels(model, case, training, ds, activation,
                                             overlap=overlap)
        raw, affine = read_volume(data.files[case.id].label)
        gt_native = np.rint(raw).astype(np.uint8)
        spacing = tuple(float(v) for v in nib.affines.voxel_sizes(affine))
        if predictions_dir is not None:
            save_label_map(native_labels, case, predictions_dir)
        gt_pre = np.asarray(case.mask)
        for i, (name, sel) in enumerate(ds.classes):
            # Regions are scored as regions: the painted label map's regions on the input grid.
            g = class_masks(gt_native, sel, ds, is_prediction=False)
            scores = _scores(class_masks(native_labels, sel, ds, is_prediction=False), g,
                             spacing, class_masks(pred, sel, ds, is_prediction=True, index=i),
                             class_masks(gt_pre, sel, ds, is_prediction=False))
            row = {"case": case.id, "class": name, "has_lesions": bool(g.any()), **scores}
            rows.append({**(extra or {}), **row})
    return pd.DataFrame(rows)


def evaluate_model(model: nn.Module, data: PreparedData, training: TrainingConfig, *,
                   part: str = "test", overlap: float | None = None,
                   predictions_dir: Path | None = None, threshold: float = 0.5,
                   extra: dict[str, Any] | None = None,
                   activation: str = "sigmoid") -> pd.DataFrame:
    """One row per case of ``data.part(part)``: ``case``, ``has_lesions`` and every metric of
    :func:`hytver_dist.metrics.evaluate_case`, the image diagonals ``diagonal_mm`` (native grid)
    and ``diagonal_vox`` (preprocessed grid), plus ``extra`` columns.

    Datasets of several classes or regions (``data.dataset``): one row per (case, class or
    region) with a ``class`` column, ``has_lesions`` meaning that class is in the case's
    ground truth; predictions are label maps (``activation`` says how the outputs are read)."""
    if data.dataset.kind != "binary":
        return _evaluate_classes(model, data, training, part, overlap, predictions_dir, extra,
                                 activation)
    rows = []
    for case in data.part(part):
        pred, pred_native = predict_case(model, case, training, overlap=overlap,
                                         threshold=threshold)
        native = load_case(data.files[case.id], require_mask=True)
        gt_native = np.asarray(native.mask) > 0
        scores = _scores(pred_native, gt_native, native.spacing, pred,
                         np.asarray(case.mask) > 0)
        if predictions_dir is not None:
            save_prediction(pred_native, case, predictions_dir)
        row = {"case": case.id, "has_lesions": bool(gt_native.any())}
        row.update(scores)
        rows.append({**(extra or {}), **row})
    return pd.DataFrame(rows)


def summarize(cases: pd.DataFrame) -> pd.DataFrame:
    """Mean / median / count of each metric over cases with new lesions, and the false-positive
    count and volume over cases without (reported apart, as the MSSEG-2 challenge does)."""
    if "class" in cases.columns:  # one block per class or region
        return pd.concat({c: summarize(g.drop(columns="class"))
                          for c, g in cases.groupby("class", sort=False)})
    pos = cases[cases["has_lesions"]]
    neg = cases[~cases["has_lesions"]]
    cols = ["dice", "jaccard", "precision", "recall", "hd95", "asd", "assd", "hd95_vox",
            "asd_vox", "lesion_f1", "lesion_sensitivity", "lesion_ppv"]
    out = pd.DataFrame({"mean": pos[cols].mean(), "median": pos[cols].median(),
                        "n": pos[cols].count()})
    for col in ("fp_lesions", "fp_volume_mm3"):
        out.loc[f"negatives: {col}"] = [neg[col].mean(), neg[col].median(), neg[col].count()]
    return out


PREDICTIONS_CSV = "predictions.csv"


def save_predictions_table(rows: list[dict[str, Any]], columns: list[str], out: Path
                           ) -> pd.DataFrame:
    """The prediction CLIs' table as ``<out>/predictions.csv`` (a local path or a URI)."""
    table = pd.DataFrame(rows, columns=columns)
    files.write_text(out / PREDICTIONS_CSV, table.to_csv(index=False))
    return table


def load_trained(path: Path, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """A model from ``best_model.pt`` (or a checkpoint.pt, whose best weights are used)."""
    payload = load_checkpoint(path)
    state = payload.get("best_state") or payload["model"]
    # The input channels are those of the first convolution (a model trained on other inputs
    # must be refused by name, not fail inside load_state_dict).
    in_channels = next(int(v.shape[1]) for v in state.values() if v.dim() == 5)
    out_channels = int(next(v for k, v in reversed(state.items()) if v.dim() == 5).shape[0])
    model = build_model({**ModelConfig(**payload["spec"]["model"]).vnet_kwargs(),
                         "in_channels": in_channels, "out_channels": out_channels})
    model.load_state_dict(state)
    return model.to(device).eval(), payload


def run_config(run_file: Path, overrides: list[str]) -> tuple[RunConfig, dict[str, Any]]:
    """The config stored in a run's ``run.json`` (with ``--set`` overrides), and the file's
    content; errors name the file and exit."""
    if not run_file.is_file():
        raise SystemExit(f"error: {run_file}: not found (is --run a directory written by "
                         "hytver_dist.train?)")
    run = json.loads(run_file.read_text())
    try:
        return RunConfig.load(run["config"], overrides, source=str(run_file)), run
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hytver_dist.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path,
                        help="run directory of hytver_dist.train (holds best_model.pt, run.json)")
    parser.add_argument("--part", default="test", choices=["test", "val", "train", "all"])
    parser.add_argument("--data", help="MSSEG-2 or nnU-Net v2 raw dataset directory "
                        "(overrides the run's data.path)")
    parser.add_argument("--overlap", type=float, help="sliding-window overlap (default: the "
                        "config's training.val_patch_overlap)")
    parser.add_argument("--out", type=Path, help="output directory (default <run>/eval-<part>)")
    parser.add_argument("--cache", help="cache directory")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_override_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg, run = run_config(args.run / "run.json", args.overrides)
    try:
        model, payload = load_trained(args.run / "best_model.pt", args.device)
    except CheckpointError as exc:
        raise SystemExit(f"error: {exc}") from None
    try:
        data = prepare_data(cfg.data, data_dir=args.data, cache_dir=args.cache)
    except DataError as exc:
        raise SystemExit(f"error: {'--data' if args.data else 'data.path'}: {exc}") from None
    if data.split.as_dict() != run["split"]:
        raise SystemExit(f"the split of {args.run} differs from the data's split now; "
                         "evaluate with the data the run was trained on")
    out = args.out or args.run / f"eval-{args.part}"
    if not data.part(args.part):
        raise SystemExit(f"the run's split has no {args.part} cases")
    out.mkdir(parents=True, exist_ok=True)
    spec = payload["spec"]
    extra = {"loss": spec["loss"], "seed": spec["seed"],
             "params": json.dumps(spec["loss_params"], sort_keys=True)}
    cases = evaluate_model(model, data, cfg.training, part=args.part, overlap=args.overlap,
                           predictions_dir=out / "predictions", extra=extra,
                           activation=loss_activation(cfg.training, data.dataset))
    cases.to_csv(out / "cases.csv", index=False)
    summary = summarize(cases)
    summary.to_csv(out / "summary.csv")
    print(summary.to_string(float_format=lambda v: f"{v:.4f}"))
    print(f"\n{len(cases)} cases -> {out / 'cases.csv'}, predictions in {out / 'predictions'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
