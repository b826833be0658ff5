"""The training loop's mixed-precision path on the CPU: bf16 autocast, fp32 losses."""

from __future__ import annotations

import math

import torch
from test_train import cache, data, spec  # noqa: F401  (module fixtures)

from hytver_dist.run import train


def test_bf16_autocast_trains_with_finite_falling_loss(data, monkeypatch):  # noqa: F811
    s = spec()
    s.training = s.training.model_copy(update={"amp": True, "iterations": 12, "eval_every": 4,
                                               "checkpoint_every": 12, "lr": 3e-3})
    seen: set[torch.dtype] = set()
    build = train.build_model

    def recording_build(kwargs):
        model = build(kwargs)
        for m in model.modules():
            if isinstance(m, torch.nn.Conv3d):
                m.register_forward_hook(lambda mod, i, out: seen.add(out.dtype))
        return model

    monkeypatch.setattr(train, "build_model", recording_build)
    result = train.train_loop(s, data, "cpu")
    assert torch.bfloat16 in seen, f"autocast did not run the convolutions in bf16: {seen}"
    losses = [row["train_loss"] for row in result.history]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses), losses
    assert losses[-1] < losses[0], losses
