"""The contract, checked for every architecture the registry finds.

An architecture is a ``SegmentationModel`` subclass in a module of ``segbench.models``; it is
tested here with the small arguments it declares (``test_kwargs``), and every bool and Literal
switch of its constructor is exercised. Nothing here lists architectures.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any, Literal, get_args, get_origin

import pytest
import torch
from torch import nn

from segbench.models import architectures

NUM_CLASSES = 5

ARCHITECTURES = [
    pytest.param(cls, dict(cls.test_kwargs), id=name.lower())
    for name, cls in architectures().items()
]


def test_the_registry_finds_the_five_papers():
    assert {"FCN", "ParseNet", "DRN", "GALD", "DUpsampling"} <= set(architectures())


def build(cls: type[nn.Module], kwargs: dict[str, Any]) -> nn.Module:
    torch.manual_seed(0)
    return cls(NUM_CLASSES, **kwargs)


@pytest.mark.parametrize(("cls", "kwargs"), ARCHITECTURES)
def test_the_forward_compiles_to_one_graph(cls, kwargs):
    """``torch.compile`` (``model.compile``, the GPU check) traces the whole forward as one graph.
    A graph break (a data-dependent shape, an unsupported call) splits it into pieces compiled
    apart, with Python and host round trips between them (``fullgraph=True`` does not report one
    made by a data-dependent shape: it captures it). A counting backend checks the trace without
    Inductor's code generation."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    net = build(cls, kwargs).train()
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(1)
    want = net(x)
    graphs = CompileCounter()  # counts the graphs Dynamo hands its backend, then runs them as is
    torch.manual_seed(1)
    got = torch.compile(net, backend=graphs)(x)
    assert graphs.frame_count == 1, f"{graphs.frame_count} graphs: the forward breaks the graph"
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def switch_values(cls: type[nn.Module]) -> list[tuple[str, Any]]:
    """Every (argument, value) of the constructor's bool and Literal arguments."""
    hints = typing.get_type_hints(cls.__init__)
    out = []
    for name in inspect.signature(cls.__init__).parameters:
        hint = hints.get(name)
        if hint is bool:
            out += [(name, True), (name, False)]
        elif get_origin(hint) is Literal:
            out += [(name, v) for v in get_args(hint)]
    return out


def switch_cases() -> list[Any]:
    cases = []
    for p in ARCHITECTURES:
        cls, kwargs = p.values
        for name, value in switch_values(cls):
            cases.append(pytest.param(cls, kwargs, name, value, id=f"{p.id}-{name}={value}"))
    return cases


@pytest.mark.parametrize(("cls", "kwargs"), ARCHITECTURES)
@pytest.mark.parametrize("size", [(64, 64), (64, 96), (96, 32)])
def test_output_is_logits_at_input_size(cls, kwargs, size):
    net = build(cls, kwargs).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, *size))
    assert isinstance(out, dict)
    assert "out" in out
    assert set(out) <= {"out", "aux"}
    for key, value in out.items():
        assert value.shape == (2, NUM_CLASSES, *size), key
        assert value.dtype == torch.float32


@pytest.mark.parametrize(("cls", "kwargs"), ARCHITECTURES)
def test_train_and_eval_outputs_have_the_same_keys(cls, kwargs):
    net = build(cls, kwargs)
    x = torch.randn(2, 3, 64, 64)
    keys_train = set(net.train()(x))
    with torch.no_grad():
        keys_eval = set(net.eval()(x))
    assert keys_train == keys_eval


@pytest.mark.parametrize(("cls", "kwargs"), ARCHITECTURES)
def test_every_parameter_receives_a_gradient(cls, kwargs):
    net = build(cls, kwargs).train()
    # Zero-initialised layers (FCN's scores) block gradients at initialisation only; a small
    # perturbation makes the test about the graph, not the initial values.
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    out = net(torch.randn(2, 3, 64, 64))
    sum(v.square().mean() for v in out.values()).backward()
    missing = [
        n
        for n, p in net.named_parameters()
        if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)
    ]
    assert not missing, f"parameters without gradient: {missing}"


@pytest.mark.parametrize(("cls", "kwargs", "name", "value"), switch_cases())
def test_every_switch_builds_and_runs(cls, kwargs, name, value):
    net = build(cls, {**kwargs, name: value}).train()
    out = net(torch.randn(2, 3, 64, 64))
    assert out["out"].shape == (2, NUM_CLASSES, 64, 64)
    assert isinstance(net.output_stride, int)


def traced_matches_eager(net: nn.Module, sizes: list[tuple[int, int]]) -> None:
    from segbench.deploy.export import _tracing, exportable

    module = exportable(net)
    with _tracing():
        traced = torch.jit.trace(module, torch.randn(1, 3, 64, 64), check_trace=False)
        for size in sizes:
            x = torch.randn(2, 3, *size)
            got, want = traced(x), module(x)
            assert got.shape == want.shape == (2, NUM_CLASSES, *size), size
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("cls", "kwargs"), ARCHITECTURES)
def test_a_model_traced_at_one_size_computes_the_same_at_any_size(cls, kwargs):
    """What ``segbench export --dynamic`` relies on: traced at 64 x 64, the network's graph pads
    to its stride and crops back at sizes that are no multiple of it, as the network does."""
    traced_matches_eager(build(cls, kwargs), [(37, 45), (100, 70), (96, 128)])
