"""bf16 autocast and channels-last memory format, checked for every registered architecture.

The fast setting of CPU recipes (``trainer.precision: bf16-mixed``, ``model.channels_last:
true``) must train every architecture: a training step gives a finite loss and gradients, its
loss close to float32's, and the logits stay close to float32's. (That accuracy holds after
training is an experiment, not a test: see docs/results/speed.md and docs/explanation/numerics.md.)
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from segbench.models import architectures
from segbench.task import SegmentationTask

NUM_CLASSES = 5
ARCHS = sorted(architectures())


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def comparable(net: nn.Module) -> nn.Module:
    """Zero-initialised classifiers make every logit 0 in both settings: give them weights so
    the comparison sees the whole network. Dropout off: its random mask follows the memory
    layout, so the two settings would drop different units."""
    gen = torch.Generator().manual_seed(1)
    for p in net.parameters():
        if p.dim() > 1 and not p.any():
            p.data.normal_(0, 0.05, generator=gen)
    for m in net.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p = 0.0
    return net


def step(task: SegmentationTask, x: torch.Tensor, y: torch.Tensor, bf16: bool):
    torch.manual_seed(0)  # the same dropout masks in both steps
    task.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = task(x)
        loss = task.compute_loss(out, {"image": x, "mask": y})["loss"]
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in task.parameters() if p.grad is not None])
    return out["out"].detach(), loss.detach(), grads


@pytest.mark.parametrize("arch", ARCHS)
def test_a_bf16_channels_last_step_is_finite_and_its_loss_close_to_float32(arch):
    cls = architectures()[arch]
    torch.manual_seed(0)
    net = comparable(cls(NUM_CLASSES, **cls.test_kwargs))
    x = torch.randn(4, 3, 64, 64)
    y = torch.randint(0, NUM_CLASSES, (4, 64, 64))
    reference = SegmentationTask(copy.deepcopy(net), num_classes=NUM_CLASSES).train()
    fast = SegmentationTask(copy.deepcopy(net), num_classes=NUM_CLASSES, channels_last=True)
    fast.train()
    conv = next(m for m in fast.net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)

    _, loss32, _ = step(reference, x, y, bf16=False)
    # float32 in channels-last too (torch 2.14 crashed here for DRN: see to_channels_last).
    assert torch.isfinite(step(copy.deepcopy(fast), x, y, bf16=False)[2]).all()
    out16, loss16, grads16 = step(fast, x, y, bf16=True)
    assert torch.isfinite(out16).all()
    assert torch.isfinite(loss16)
    assert torch.isfinite(grads16).all()
    assert grads16.abs().sum() > 0
    # The logits and gradients of a *fresh* narrow network in training mode are chaotic (batch
    # norm re-normalises each layer's rounding error, which compounds over ResNet-50's depth),
    # so they are compared in eval mode below; the loss is well-conditioned and compared here.
    assert abs(float(loss16) - float(loss32)) < 0.01 * float(loss32)


@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_channels_last_logits_are_close_to_float32(arch):
    cls = architectures()[arch]
    torch.manual_seed(0)
    net = comparable(cls(NUM_CLASSES, **cls.test_kwargs)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = SegmentationTask(copy.deepcopy(net), num_classes=NUM_CLASSES)(x)["out"]
        fast = SegmentationTask(copy.deepcopy(net), num_classes=NUM_CLASSES, channels_last=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = fast(x)["out"]
    assert torch.isfinite(got).all()
    assert relative_error(got, want) < 0.05


@pytest.mark.parametrize("arch", ARCHS)
def test_channels_last_alone_changes_only_rounding(arch):
    cls = architectures()[arch]
    torch.manual_seed(0)
    net = cls(NUM_CLASSES, **cls.test_kwargs).eval()
    comparable(net)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = SegmentationTask(copy.deepcopy(net), num_classes=NUM_CLASSES)(x)["out"]
        got = SegmentationTask(copy.deepcopy(net), num_classes=NUM_CLASSES, channels_last=True)(x)
    torch.testing.assert_close(got["out"], want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
