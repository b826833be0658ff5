"""Datasets (MSSEG-2, nnU-Net v2 raw, synthetic): validated loading, splits, preprocessing with
an on-disk cache, patches (docs/datasets.md).

Typical use::

    from hytver_dist import data
    files = data.discover_cases(root)
    split = data.coactseg_split(n_val=4, seed=0, available=[f.id for f in files])
    train = data.load_preprocessed_all([f for f in files if f.id in split.train], cache_dir)
    sampler = data.PatchSampler(train, data.PatchConfig(patch_size=80))
    image, mask = sampler.sample(np.random.default_rng(0))
"""

from .._extras import require_extra

require_extra("train", "nibabel", "scipy")


from .errors import DataError
from .io import Case, load_case, read_volume, save_mask
from .msseg2 import (
    ALL_CASES,
    BASELINE_NAME,
    COACTSEG_TEST,
    COACTSEG_TRAIN,
    EXPERT_MASK_NAMES,
    FOLLOWUP_NAME,
    MASK_NAME,
    NEGATIVE_CASES,
    CaseFiles,
    Split,
    coactseg_split,
    discover_cases,
    kfold_splits,
    split_cases,
    split_from_file,
)
from .preprocess import (
    DEFAULT_SPACING,
    GridMeta,
    PreprocessConfig,
    PreprocessedCase,
    estimate_brain_mask,
    load_preprocessed,
    load_preprocessed_all,
    preprocess_case,
    resample_mask,
    resample_to_spacing,
    to_original_grid,
)
from .sampling import PatchConfig, PatchSampler, augment

__all__ = [
    "ALL_CASES", "BASELINE_NAME", "COACTSEG_TEST", "COACTSEG_TRAIN", "DEFAULT_SPACING",
    "EXPERT_MASK_NAMES", "FOLLOWUP_NAME", "MASK_NAME", "NEGATIVE_CASES",
    "Case", "CaseFiles", "DataError", "GridMeta", "PatchConfig",
    "PatchSampler", "PreprocessConfig", "PreprocessedCase", "Split",
    "augment", "coactseg_split", "discover_cases", "estimate_brain_mask", "kfold_splits",
    "load_case", "load_preprocessed", "load_preprocessed_all",
    "preprocess_case", "read_volume", "resample_mask", "resample_to_spacing", "save_mask",
    "split_cases", "split_from_file", "to_original_grid",
]  # fmt: skip
