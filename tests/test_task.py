"""SegmentationTask: loss composition, hooks, learning-rate schedule, evaluation accounting."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segbench.errors import ConfigError
from segbench.models.base import SegmentationModel
from segbench.task import SegmentationTask


class ToyNet(SegmentationModel, register=False):  # a test double, not an architecture
    """1x1 convolutions with an auxiliary head and an extra loss term."""

    def __init__(self, num_classes: int = 3, aux: bool = True) -> None:
        super().__init__()
        self.out = nn.Conv2d(3, num_classes, 1)
        self.aux = nn.Conv2d(3, num_classes, 1) if aux else None
        self.seen_datamodule = None

    def forward(self, x):
        out = {"out": self.out(x)}
        if self.aux is not None:
            out["aux"] = self.aux(x)
        return out

    def setup_from_data(self, datamodule) -> None:
        self.seen_datamodule = datamodule

    def extra_losses(self, outputs, batch):
        return {"l2": 0.5 * self.out.weight.square().sum()}


def batch(n: int = 2) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    mask = torch.randint(0, 3, (n, 4, 5))
    mask[0, 0] = 255
    return {"image": torch.randn(n, 3, 4, 5), "mask": mask}


def test_loss_is_ce_plus_weighted_aux_plus_extra_terms():
    task = SegmentationTask(ToyNet(), num_classes=3, aux_weight=0.4)
    b = batch()
    out = task(b["image"])
    terms = task.compute_loss(out, b)
    ce = F.cross_entropy(out["out"], b["mask"], ignore_index=255)
    aux = F.cross_entropy(out["aux"], b["mask"], ignore_index=255)
    l2 = 0.5 * task.net.out.weight.square().sum()
    assert terms["ce"].item() == pytest.approx(ce.item())
    assert terms["aux"].item() == pytest.approx(aux.item())
    assert terms["loss"].item() == pytest.approx((ce + 0.4 * aux + l2).item(), rel=1e-6)


def test_aux_is_skipped_when_weight_is_zero_or_absent():
    b = batch()
    assert "aux" not in SegmentationTask(ToyNet(), num_classes=3, aux_weight=0.0).compute_loss(
        ToyNet()(b["image"]), b
    )
    assert "aux" not in SegmentationTask(ToyNet(aux=False), num_classes=3).compute_loss(
        ToyNet(aux=False)(b["image"]), b
    )


def test_setup_calls_the_data_hook_only_for_fit():
    task = SegmentationTask(ToyNet(), num_classes=3)
    dm = object()
    task._trainer = SimpleNamespace(datamodule=dm)
    task.setup("validate")
    assert task.net.seen_datamodule is None
    task.setup("fit")
    assert task.net.seen_datamodule is dm


def lrs(task: SegmentationTask, total: int, batches: int = 1, accumulate: int = 1) -> list[float]:
    task._trainer = SimpleNamespace(
        estimated_stepping_batches=total,
        num_training_batches=batches,
        accumulate_grad_batches=accumulate,
    )
    conf = task.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert conf["lr_scheduler"]["interval"] == "step"
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_poly_schedule_per_iteration():
    task = SegmentationTask(
        ToyNet(), num_classes=3, poly_power=0.9, optimizer=lambda p: torch.optim.SGD(p, lr=0.1)
    )
    got = lrs(task, 20)
    want = [0.1 * (1 - t / 20) ** 0.9 for t in range(20)]
    assert got == pytest.approx(want, rel=1e-5)


def test_biases_get_their_own_learning_rate_and_weight_decay_under_the_schedule():
    """FCN's Caffe recipe: biases at twice the learning rate and without weight decay; the
    schedule scales both groups alike. At the defaults there is one group, as before."""
    sgd = lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4)  # noqa: E731
    plain = SegmentationTask(ToyNet(), num_classes=3, optimizer=sgd).make_optimizer()
    assert len(plain.param_groups) == 1
    task = SegmentationTask(
        ToyNet(), num_classes=3, optimizer=sgd, bias_lr_factor=2.0, bias_weight_decay=0.0
    )
    weights, biases = task.make_optimizer().param_groups
    net = task.net
    assert {id(p) for p in biases["params"]} == {id(net.out.bias), id(net.aux.bias)}
    assert {id(p) for p in weights["params"]} == {id(net.out.weight), id(net.aux.weight)}
    assert (weights["lr"], weights["weight_decay"]) == (0.1, 5e-4)
    assert (biases["lr"], biases["weight_decay"]) == (0.2, 0.0)
    assert biases["momentum"] == 0.9
    task._trainer = SimpleNamespace(estimated_stepping_batches=10)
    conf = task.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    for _ in range(5):
        opt.step()
        sched.step()
    weights_lr, biases_lr = (g["lr"] for g in opt.param_groups)
    assert weights_lr == pytest.approx(0.1 * 0.5**0.9, rel=1e-5)
    assert biases_lr == pytest.approx(2 * weights_lr, rel=1e-6)


@pytest.mark.parametrize(("key", "value"), [("bias_lr_factor", -1.0), ("bias_weight_decay", -1e-4)])
def test_negative_bias_settings_are_refused_by_name(key, value):
    with pytest.raises(ConfigError, match=f"model.{key}"):
        SegmentationTask(ToyNet(), num_classes=3, **{key: value})


def test_warmup_then_poly():
    task = SegmentationTask(
        ToyNet(),
        num_classes=3,
        warmup_iters=5,
        warmup_factor=0.1,
        optimizer=lambda p: torch.optim.SGD(p, lr=1.0),
    )
    got = lrs(task, 25)
    assert got[0] == pytest.approx(0.1)
    assert got[:5] == sorted(got[:5])  # rising
    assert got[5] == pytest.approx(1.0)
    assert got[5 + 10] == pytest.approx((1 - 10 / 20) ** 0.9, rel=1e-5)


def test_step_schedule_decays_every_step_epochs_as_fyu_drn():
    """fyu/drn segment.py: ``lr = lr0 * 0.1 ** (epoch // step)``; with 6 batches per epoch,
    accumulated by 2 (3 optimiser steps per epoch), step 2 epochs, 7 epochs."""
    task = SegmentationTask(
        ToyNet(),
        num_classes=3,
        lr_schedule="step",
        step_epochs=2,
        step_gamma=0.1,
        optimizer=lambda p: torch.optim.SGD(p, lr=1.0),
    )
    got = lrs(task, 21, batches=6, accumulate=2)
    want = [0.1 ** ((it // 3) // 2) for it in range(21)]
    assert got == pytest.approx(want, rel=1e-6)


def test_warmup_then_cosine():
    task = SegmentationTask(
        ToyNet(),
        num_classes=3,
        lr_schedule="cosine",
        warmup_iters=4,
        optimizer=lambda p: torch.optim.SGD(p, lr=1.0),
    )
    got = lrs(task, 24)
    assert got[0] == pytest.approx(0.1)
    want = [(1 + math.cos(math.pi * t / 20)) / 2 for t in range(20)]
    assert got[4:] == pytest.approx(want, rel=1e-5, abs=1e-9)


@pytest.mark.parametrize(
    ("key", "value"), [("step_epochs", 0), ("step_gamma", 0.0), ("step_gamma", 1.5)]
)
def test_bad_step_schedule_values_are_named(key, value):
    with pytest.raises(ConfigError, match=f"model.{key}"):
        SegmentationTask(ToyNet(), num_classes=3, lr_schedule="step", **{key: value})


def test_constant_schedule():
    task = SegmentationTask(
        ToyNet(),
        num_classes=3,
        lr_schedule="constant",
        optimizer=lambda p: torch.optim.SGD(p, lr=0.3),
    )
    assert set(lrs(task, 7)) == {0.3}


def test_eval_loss_is_the_mean_over_all_valid_pixels_of_the_split():
    task = SegmentationTask(ToyNet(aux=False), num_classes=3)
    b1, b2 = batch(2), batch(1)
    b2["mask"][:, :3] = 255  # batches with different numbers of valid pixels
    total, count = 0.0, 0
    for b in (b1, b2):
        task._eval_step("val", b)
        logits = task(b["image"])["out"]
        total += F.cross_entropy(logits, b["mask"], ignore_index=255, reduction="sum").item()
        count += int((b["mask"] != 255).sum())
    assert task.losses["val"].compute().item() == pytest.approx(total / count, rel=1e-6)


def test_init_from_reports_what_does_not_fit(tmp_path):
    ckpt = tmp_path / "other.pt"
    torch.save({"something.else": torch.zeros(1)}, ckpt)
    task = SegmentationTask(ToyNet(), num_classes=3)
    with pytest.raises(ValueError, match=r"no tensor of .* fits ToyNet"):
        task.load_matching(str(ckpt))
    with pytest.raises(FileNotFoundError, match=r"model\.init_from"):
        task.load_matching(str(tmp_path / "missing.ckpt"))


def test_median_frequency_weights_come_from_the_data_module_at_fit():
    task = SegmentationTask(ToyNet(), num_classes=3, class_weights="median_frequency")
    assert task.criterion.weight is None
    dm = SimpleNamespace(median_frequency_weights=lambda: [0.5, 1.0, 4.0])
    task._trainer = SimpleNamespace(datamodule=dm)
    task.net.setup_from_data = lambda datamodule: None
    task.setup("fit")
    assert task.criterion.weight.tolist() == [0.5, 1.0, 4.0]
    assert task.aux_criterion.weight.tolist() == [0.5, 1.0, 4.0]
