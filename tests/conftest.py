"""Shared pytest fixtures.

``synth_dataset``: a tiny synthetic MSSEG-2-layout dataset (4 cases of 4 mm voxels, 1 without
new lesions, seed 0), written once per session; about 2 s. Treat it as read-only: copy a case
folder (``shutil.copytree``) before modifying files.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root folder holding ``syn000 .. syn003/`` (``flair_time01/02_on_middle_space.nii.gz``,
    ``ground_truth.nii.gz``) and ``manifest.json``."""
    from hytver_dist.synth import generate_dataset

    root = tmp_path_factory.mktemp("synth_tiny")
    generate_dataset(root, 4, seed=0, size="tiny", n_negative=1)
    return root
