"""ParseNet's L2 normalisation layer: values, gradients against autograd, a scale that learns."""

from __future__ import annotations

import pytest
import torch

from segbench.models.layers import L2Norm


@pytest.mark.parametrize("shape", [(3, 5), (2, 4, 3, 6)])
def test_every_position_gets_norm_equal_to_the_scale(shape):
    torch.manual_seed(0)
    x = torch.randn(*shape) * torch.logspace(-2, 3, shape[0]).view(-1, *[1] * (len(shape) - 1))
    y = L2Norm(shape[1], scale_init=20.0)(x)
    norms = y.norm(dim=1)
    assert torch.allclose(norms, torch.full_like(norms, 20.0), rtol=1e-5)
    # Direction is kept: y is a positive multiple of x at every position.
    cos = torch.nn.functional.cosine_similarity(x, y, dim=1)
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-5)


def test_the_scale_is_per_channel():
    norm = L2Norm(3, scale_init=1.0)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
    x = torch.tensor([[1.0, 1.0, 1.0]])
    assert torch.allclose(norm(x), torch.tensor([[1.0, 2.0, 3.0]]) / 3**0.5)


def test_a_zero_vector_maps_to_zero_with_finite_gradients():
    norm = L2Norm(4)
    x = torch.zeros(1, 4, 2, 2, requires_grad=True)
    y = norm(x)
    y.sum().backward()
    assert torch.equal(y, torch.zeros_like(y))
    assert torch.isfinite(x.grad).all()
    assert torch.isfinite(norm.weight.grad).all()


@pytest.mark.parametrize("learnable", [True, False])
def test_gradients_match_finite_differences_in_double_precision(learnable):
    torch.manual_seed(0)
    norm = L2Norm(5, scale_init=10.0, learnable=learnable).double()
    if learnable:
        with torch.no_grad():
            norm.weight.uniform_(0.5, 20.0)  # distinct per-channel values
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64, requires_grad=True)
    inputs = (x, norm.weight) if learnable else (x,)

    def fn(x: torch.Tensor, *weight: torch.Tensor) -> torch.Tensor:
        if not weight:
            return norm(x)
        return torch.func.functional_call(norm, {"weight": weight[0]}, (x,))

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)
    assert torch.autograd.gradgradcheck(fn, inputs, eps=1e-6, atol=1e-5)


def test_fixed_scale_has_no_parameters_and_stays_in_the_state_dict():
    norm = L2Norm(7, scale_init=20.0, learnable=False)
    assert not list(norm.parameters())
    assert torch.equal(norm.state_dict()["weight"], torch.full((7,), 20.0))
    assert sum(p.numel() for p in L2Norm(7).parameters()) == 7


def test_the_scale_learns_toward_a_target_by_gradient_descent():
    """The target is the normalised input times a per-channel scale; SGD on the mean squared
    error must move every ``gamma_i`` from its initial 10 to the target's value."""
    torch.manual_seed(0)
    target_scale = torch.tensor([2.0, 5.0, 15.0, 30.0])
    norm = L2Norm(4, scale_init=10.0)
    opt = torch.optim.SGD(norm.parameters(), lr=1.0)
    first = last = None
    for _ in range(300):
        x = torch.randn(8, 4, 5, 5)
        target = x / x.norm(dim=1, keepdim=True) * target_scale.view(1, 4, 1, 1)
        loss = (norm(x) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
        last = loss.item()
    assert torch.allclose(norm.weight.detach(), target_scale, rtol=1e-3)
    assert last < 1e-4 * first


def test_wrong_channel_count_is_named():
    with pytest.raises(ValueError, match="L2Norm\\(4\\) got 3 channels"):
        L2Norm(4)(torch.randn(1, 3, 2, 2))


def test_half_precision_features_with_a_large_norm_do_not_overflow():
    x = torch.full((2, 4096), 100.0, dtype=torch.float16)  # squared norm 4e7 > float16's max
    y = L2Norm(4096, scale_init=10.0)(x)
    assert y.dtype == torch.float16
    assert torch.allclose(y.float().norm(dim=1), torch.tensor([10.0, 10.0]), rtol=1e-2)
