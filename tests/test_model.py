"""V-Net shapes, size, gradients, input checks, config and checkpoint loading (CPU, tiny)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from hytver_dist.model import VNet, build_model, count_parameters, load_pretrained

F = 4  # base filters for CPU tests


def _tiny(**kw: object) -> VNet:
    torch.manual_seed(0)
    return VNet(n_filters=F, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("head", ["single", "coactseg"])
@pytest.mark.parametrize("batch", [1, 2])
def test_forward_shape_and_dtype(head: str, batch: int) -> None:
    model = _tiny(head=head).eval()
    x = torch.randn(batch, 3, 32, 32, 32)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (batch, 1, 32, 32, 32)
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()
    # Logits, not probabilities: a sigmoid would keep every value inside (0, 1).
    out_conv = getattr(model.decoder, "out_conv" if head == "single" else "out_conv_3")
    out_conv.bias.data.fill_(5.0)
    with torch.no_grad():
        assert model(x).max() > 1.0


def test_non_cubic_input() -> None:
    with torch.no_grad():
        y = _tiny().eval()(torch.randn(1, 3, 16, 32, 48))
    assert y.shape == (1, 1, 16, 32, 48)


def test_paper_size_parameter_count() -> None:
    single = count_parameters(VNet(n_filters=16))
    coact = count_parameters(VNet(n_filters=16, head="coactseg"))
    # CoactSeg's full network = our coactseg head with a 2-class out_conv_3 plus its two unused
    # all-lesion heads out_conv_1/2 (16 -> 2, 1x1x1 each): its published 9,484,502 parameters.
    full = count_parameters(VNet(n_filters=16, head="coactseg", out_channels=2)) + 2 * (16 * 2 + 2)
    print(f"\nVNet(n_filters=16) parameters: single head {single:,}, coactseg head {coact:,}, "
          f"CoactSeg 3-head equivalent {full:,}")
    assert full == 9_484_502
    assert coact == 9_484_417
    assert single == 9_449_713
    assert count_parameters(VNet(n_filters=8)) < single / 3  # ~quarter size for tests


def test_state_dict_keys_follow_coactseg() -> None:
    keys = set(VNet(n_filters=F, head="coactseg").state_dict())
    assert "encoder.block_one.conv.0.weight" in keys
    assert "encoder.block_five.conv.7.bias" in keys  # 3 x (conv, BN, act): conv at 0, 3, 6
    assert "decoder.block_c2f.conv.0.weight" in keys
    assert "decoder.out_conv_3.bias" in keys
    # CoactSeg has 230 keys; we leave out out_conv_1/2 (weight + bias each).
    assert len(keys) == 230 - 4


@pytest.mark.parametrize("head", ["single", "coactseg"])
def test_gradient_reaches_every_parameter(head: str) -> None:
    model = _tiny(head=head, dropout=0.5).train()
    x = torch.randn(2, 3, 16, 16, 16)
    loss = model(x).float().pow(2).mean()
    loss.backward()
    for name, p in model.named_parameters():
        # Every parameter must get a gradient: DDP (find_unused_parameters=False) needs it.
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert model.encoder.block_one.conv[0].weight.grad.abs().sum() > 0


def test_dropout_train_vs_eval() -> None:
    model = _tiny(dropout=0.5)
    x = torch.randn(2, 3, 16, 16, 16)  # batch 2: BatchNorm needs > 1 value at the 1^3 bottleneck
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))
    assert isinstance(model.encoder.dropout, nn.Dropout3d)
    assert isinstance(_tiny().encoder.dropout, nn.Identity)


def test_activation_choice() -> None:
    acts = {type(m) for m in _tiny().modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU))}
    assert acts == {nn.LeakyReLU}
    acts = {type(m) for m in _tiny(activation="relu").modules()
            if isinstance(m, (nn.ReLU, nn.LeakyReLU))}
    assert acts == {nn.ReLU}


@pytest.mark.parametrize(
    "shape, match",
    [
        ((3, 32, 32, 32), r"\(B, 3, D, H, W\), got \(3, 32, 32, 32\)"),
        ((1, 2, 32, 32, 32), r"got \(1, 2, 32, 32, 32\)"),
        ((1, 3, 32, 30, 32), r"divisible by 16, got \(1, 3, 32, 30, 32\)"),
    ],
)
def test_bad_input_shape(shape: tuple[int, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _tiny()(torch.zeros(shape))


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"activation": "gelu"}, "activation"),
        ({"head": "triple"}, "head"),
        ({"normalization": "layer"}, "normalization"),
        ({"n_filters": 0}, "n_filters"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_bad_constructor_args(kw: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        VNet(**kw)  # type: ignore[arg-type]


def test_build_model() -> None:
    m = build_model({"name": "vnet", "n_filters": F, "activation": "relu", "dropout": 0.5})
    assert isinstance(m, VNet) and m.n_filters == F
    m = build_model({"model": {"n_filters": F, "head": "coactseg"}, "lr": 1e-3})
    assert m.head == "coactseg"
    # The sweep config's ModelConfig dataclass (activation spelled "leaky_relu").
    @dataclasses.dataclass
    class ModelConfig:
        n_filters: int = F
        activation: str = "leaky_relu"
        dropout: float = 0.0

    m = build_model(ModelConfig())
    assert {type(x) for x in m.modules() if isinstance(x, (nn.ReLU, nn.LeakyReLU))} == {
        nn.LeakyReLU}
    with pytest.raises(ValueError, match="n_filter"):
        build_model({"n_filter": 4})
    with pytest.raises(ValueError, match="unet"):
        build_model({"name": "unet"})


# ---- load_pretrained ---------------------------------------------------------------------


def _outputs(model: VNet, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    with torch.no_grad():
        return model.eval()(torch.randn(1, 3, 16, 16, 16))


@pytest.mark.parametrize("wrap", ["raw", "model", "state_dict", "module_prefix"])
def test_load_roundtrip(tmp_path, wrap: str) -> None:
    src, dst = _tiny(), VNet(n_filters=F)
    sd = src.state_dict()
    obj = {
        "raw": sd,
        "model": {"model": sd, "epoch": 3},
        "state_dict": {"state_dict": sd},
        "module_prefix": {f"module.{k}": v for k, v in sd.items()},
    }[wrap]
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    report = load_pretrained(dst, path)
    assert report.ok, str(report)
    assert len(report.matched) == len(sd) and not report.mapped
    assert report.stripped_prefixes == (["module."] if wrap == "module_prefix" else [])
    assert torch.equal(_outputs(src), _outputs(dst))


def test_load_report_missing_unexpected_mismatched(tmp_path) -> None:
    sd = dict(_tiny().state_dict())
    dropped = "decoder.block_six.conv.0.bias"
    del sd[dropped]
    sd["decoder.extra.weight"] = torch.zeros(3)
    bad = "encoder.block_one.conv.0.weight"
    sd[bad] = torch.zeros(F, 2, 3, 3, 3)  # CoactSeg-like model with 2 input channels
    torch.save(sd, tmp_path / "c.pth")
    dst = VNet(n_filters=F)
    before = dst.encoder.block_one.conv[0].weight.detach().clone()
    report = load_pretrained(dst, tmp_path / "c.pth")
    assert report.missing == [dropped]
    assert report.unexpected == ["decoder.extra.weight"]
    assert report.shape_mismatched == [(bad, (F, 2, 3, 3, 3), (F, 3, 3, 3, 3))]
    assert not report.ok
    assert torch.equal(dst.encoder.block_one.conv[0].weight, before)  # mismatched: not loaded
    text = str(report)
    assert "1 missing, 1 unexpected, 1 shape-mismatched" in text
    assert f"shape mismatch: {bad} checkpoint ({F}, 2, 3, 3, 3) vs model ({F}, 3, 3, 3, 3)" in text
    with pytest.raises(RuntimeError, match="strict load failed"):
        load_pretrained(VNet(n_filters=F), tmp_path / "c.pth", strict=True)


def _coactseg_like_state_dict() -> tuple[VNet, dict[str, torch.Tensor]]:
    """A CoactSeg-layout checkpoint: 2-class head, ReLU, plus its all-lesion heads 1 and 2."""
    src = _tiny(head="coactseg", out_channels=2, activation="relu")
    sd = dict(src.state_dict())
    for i in (1, 2):
        sd[f"decoder.out_conv_{i}.weight"] = torch.randn(2, F, 1, 1, 1)
        sd[f"decoder.out_conv_{i}.bias"] = torch.randn(2)
    return src, sd


def test_load_coactseg_two_class_head_is_mapped_exactly() -> None:
    src, sd = _coactseg_like_state_dict()
    dst = VNet(n_filters=F, head="coactseg", activation="relu")
    report = load_pretrained(dst, sd)
    assert report.mapped == ["decoder.out_conv_3.weight", "decoder.out_conv_3.bias"]
    assert sorted(report.unexpected) == sorted(
        f"decoder.out_conv_{i}.{p}" for i in (1, 2) for p in ("weight", "bias")
    )
    assert not report.missing and not report.shape_mismatched
    # softmax([z0, z1])[1] == sigmoid(z1 - z0): same new-lesion probabilities.
    p_src = torch.softmax(_outputs(src), dim=1)[:, 1:2]
    p_dst = torch.sigmoid(_outputs(dst))
    torch.testing.assert_close(p_dst, p_src, rtol=1e-5, atol=1e-6)


def test_load_coactseg_into_single_head_reports_head_keys() -> None:
    _, sd = _coactseg_like_state_dict()
    report = load_pretrained(VNet(n_filters=F), sd)
    assert set(report.missing) == {
        f"decoder.{m}" for m in ("block_nine.conv.0.weight", "block_nine.conv.0.bias",
                                 "block_nine.conv.1.weight", "block_nine.conv.1.bias",
                                 "block_nine.conv.1.running_mean", "block_nine.conv.1.running_var",
                                 "block_nine.conv.1.num_batches_tracked",
                                 "out_conv.weight", "out_conv.bias")
    }
    assert "decoder.out_conv_3.weight" in report.unexpected
    assert "encoder.block_one.conv.0.weight" in report.matched
    assert not report.mapped and not report.shape_mismatched


def test_load_rejects_non_state_dict(tmp_path) -> None:
    torch.save([1, 2, 3], tmp_path / "x.pth")
    with pytest.raises(ValueError, match="not a state dict"):
        load_pretrained(_tiny(), tmp_path / "x.pth")
