"""DUpsampling: the temperature, the switches that build nothing, the fitting hook end to end."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from segbench.cache import CACHE_ENV
from segbench.cli import main
from segbench.data import SyntheticSegmentation
from segbench.models import DUpsampling

TINY = {"width": 1 / 16, "compressed_dim": 16}


def test_logits_are_divided_by_the_learned_temperature():
    torch.manual_seed(0)
    net = DUpsampling(5, **TINY).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = net(x)["out"]
        net.log_temperature.fill_(math.log(2.0))
        after = net(x)["out"]
    assert float(net.temperature.detach()) == pytest.approx(2.0)
    assert torch.allclose(after * 2, before, atol=1e-5)
    assert torch.equal(after.argmax(1), before.argmax(1))  # T never changes a prediction


def names(net: torch.nn.Module) -> set[str]:
    return {n.split(".")[0] for n, _ in net.named_parameters()} | {
        n.split(".")[0] for n, _ in net.named_buffers()
    }


def test_switched_off_parts_are_not_built():
    full = names(DUpsampling(5, **TINY))
    assert {"log_temperature", "fusion", "project", "upsample"} <= full
    assert "log_temperature" not in names(DUpsampling(5, temperature=False, **TINY))
    assert "fusion" not in names(DUpsampling(5, fusion=False, **TINY))
    bilinear = names(DUpsampling(5, upsampler="bilinear", **TINY))
    assert {"classifier"} <= bilinear
    assert not {"upsample", "project", "decoder"} & bilinear
    v3p = names(DUpsampling(5, upsampler="deeplabv3plus", **TINY))
    assert {"decoder"} <= v3p
    assert not {"upsample", "project", "classifier"} & v3p


def test_fuse_layers_are_checked():
    with pytest.raises(ValueError, match="fuse_layers"):
        DUpsampling(5, fuse_layers=("layer4",), **TINY)
    with pytest.raises(ValueError, match="fuse_layers"):
        DUpsampling(5, fuse_layers=("conv9",), **TINY)
    DUpsampling(5, fusion=False, fuse_layers=(), **TINY)


@pytest.mark.parametrize("size", [(70, 50), (33, 97)])
def test_any_input_size_is_padded_and_cropped(size):
    net = DUpsampling(5, output_stride=32, **TINY).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, *size))["out"].shape == (1, 5, *size)


def test_setup_from_data_fits_w_only_for_dupsample(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    data = SyntheticSegmentation(num_train=4, image_size=(32, 32), num_workers=0)
    net = DUpsampling(11, **TINY)
    net.setup_from_data(data)
    assert net.upsample.basis_source == "fitted"
    assert bool(net.upsample.fitted)
    w = net.upsample.weight
    assert torch.allclose(w.T @ w, torch.eye(16), atol=1e-5)  # PCA: orthonormal columns
    DUpsampling(11, upsampler="bilinear", **TINY).setup_from_data(data)  # nothing to fit
    assert len(list(tmp_path.rglob("*.pt"))) == 1


def test_fit_fits_w_through_the_task_and_a_second_run_reads_the_cache(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    cfg = tmp_path / "dupsampling.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "model": {
                    "net": {
                        "class_path": "segbench.models.DUpsampling",
                        "init_args": {"width": 0.0625, "compressed_dim": 16},
                    }
                }
            }
        )
    )
    main(["fit", *tiny(name="first", extra=["--config", str(cfg)])])
    cached = list((tmp_path / "cache" / "dupsample").glob("*.pt"))
    assert len(cached) == 1
    written = cached[0].stat().st_mtime_ns
    main(["fit", *tiny(name="second", extra=["--config", str(cfg)])])
    assert list((tmp_path / "cache" / "dupsample").glob("*.pt")) == cached
    assert cached[0].stat().st_mtime_ns == written  # read, not fitted and written again
    basis = torch.load(cached[0], weights_only=True)
    for name in ("first", "second"):
        state = torch.load(
            tiny.root / "test" / name / "checkpoints" / "last.ckpt", weights_only=True
        )["state_dict"]
        assert torch.equal(state["net.upsample.weight"], basis["weight"])  # fixed W (the paper)
        assert bool(state["net.upsample.fitted"])


def test_dupsample_decoder_costs_less_than_the_deeplabv3plus_decoder():
    from segbench.analysis.summary import summarise

    with torch.device("meta"):
        nets = {u: DUpsampling(21, upsampler=u, width=0.25) for u in ("dupsample", "deeplabv3plus")}
    s = {u: summarise(net, (128, 128)) for u, net in nets.items()}
    assert s["dupsample"].backbone_flops == s["deeplabv3plus"].backbone_flops > 0
    decoder = {u: x.flops - x.backbone_flops for u, x in s.items()}
    assert 0 < decoder["dupsample"] < decoder["deeplabv3plus"]
    assert "decoder GFLOPs" in s["dupsample"].markdown()
