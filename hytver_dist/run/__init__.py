"""One training run: its configuration, data preparation, the training loop, sliding-window
inference, evaluation and the pretraining stage run in-process, with the ``train`` and
``evaluate`` command lines. Needs the ``train`` extra; imports no Ray."""

from .._extras import require_extra

require_extra("train", "nibabel", "scipy", "pandas", "pydantic", "yaml", "monai")
