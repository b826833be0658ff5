"""Prediction on new scans with a model trained on an nnU-Net v2 raw dataset: an ``imagesTs``
folder (``<case>_<XXXX><ending>``, one file per channel) in, one uint8 label map per case out.

The model's checkpoint carries what the scans need (:class:`.prepare.DatasetInfo`: channel
names, classes or regions, the training set's CT statistics), so the training data is not
needed here. ``python -m hytver_dist.predict`` comes here when the checkpoint holds it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from ..data import DataError
from ..data.nnunet import SUPPORTED_ENDINGS, NnunetCaseFiles, load_nnunet_case
from ..data.nnunet_prep import apply_ct_statistics, preprocess_nnunet
from ..metrics import label_lesions, min_lesion_size_voxels
from .config import RunConfig
from .evaluate import predict_labels, save_label_map, save_predictions_table
from .prepare import DatasetInfo, preprocess_config
from .train import class_masks, loss_activation

_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})(?P<ending>\.nii\.gz|\.nii)$")


def channel_files(root: Path, n_channels: int) -> dict[str, list[Path]]:
    """Each case's channel files (channels 0..n-1) in ``root``; a case with other channels is
    refused, naming the case and the file."""
    groups: dict[str, dict[int, Path]] = {}
    for path in sorted(root.iterdir()):
        if m := _FILE.match(path.name):
            groups.setdefault(m["case"], {})[int(m["channel"])] = path
    if not groups:
        raise DataError(f"no <case>_<XXXX> scan files ({' or '.join(SUPPORTED_ENDINGS)})", root)
    out = {}
    for case, channels in groups.items():
        if sorted(channels) != list(range(n_channels)):
            wrong = [c for c in channels if c >= n_channels]
            named = channels[wrong[0]] if wrong else root / f"{case}_{len(channels):04d}"
            raise DataError(f"case {case}: channels {sorted(channels)}; the model takes "
                            f"{n_channels} (0..{n_channels - 1})", named)
        out[case] = [channels[c] for c in range(n_channels)]
    return out


def predict_nnunet(model: nn.Module, payload: dict[str, Any], cfg: RunConfig, scans: Path,
                   out: Path, *, overlap: float | None = None) -> pd.DataFrame:
    """Label maps of the cases in ``scans`` as ``<out>/<case>.nii.gz`` and a table of each
    class's (or region's) predicted lesions and volume, also ``<out>/predictions.csv``."""
    info = DatasetInfo.from_dict(payload["dataset"])
    activation = loss_activation(cfg.training, info)
    cases = channel_files(Path(scans), info.in_channels)
    config = preprocess_config(cfg.data)
    rows = []
    try:
        for case, paths in cases.items():
            scan = load_nnunet_case(None, NnunetCaseFiles(case, tuple(paths), None))
            pre = apply_ct_statistics(preprocess_nnunet(scan, info.channel_names, config),
                                      info.ct)
            _, labels = predict_labels(model, pre, cfg.training, info, activation,
                                       overlap=overlap)
            path = save_label_map(labels, pre, out)
            voxel_mm3 = float(np.prod(scan.spacing))
            for name, sel in info.classes:  # labels: the painted label map
                mask = class_masks(labels, sel, info, is_prediction=False)
                _, n = label_lesions(mask, 6, min_lesion_size_voxels(scan.spacing))
                rows.append({"case": case, "class": name, "lesions": n,
                             "predicted_voxels": int(mask.sum()),
                             "predicted_volume_mm3": float(mask.sum()) * voxel_mm3,
                             "mask": path.name})
    finally:
        table = save_predictions_table(rows, ["case", "class", "lesions", "predicted_voxels",
                                              "predicted_volume_mm3", "mask"], out)
    return table
