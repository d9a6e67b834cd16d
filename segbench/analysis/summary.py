"""``segbench summary --config FILE.yaml [overrides] [--input_size H W]``.

The configured network's parameter count (total and trainable), output stride and FLOPs at an
input size, without loading any data or weights: the network is built on the meta device and the
FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode``, which counts a multiply-add as
2 FLOPs. Many papers (and fvcore) quote multiply-adds as "FLOPs", so both are printed. For a
network with a ``backbone`` submodule the FLOPs are also split into the backbone's and the rest
(neck, head, decoder and upsampler: everything the architectures differ by).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from segbench.cli.lightning import build
from segbench.options import command_parser, option_keys, options_of, split_argv
from segbench.tables import markdown_table


@dataclass
class ModelSummary:
    name: str
    params: int
    trainable: int
    output_stride: int | None
    input_size: tuple[int, int]
    flops: int
    backbone_flops: int | None = None

    def markdown(self) -> str:
        rows = [
            ("model", self.name),
            ("parameters", f"{self.params:,} ({self.params / 1e6:.2f} M)"),
            ("trainable", f"{self.trainable:,} ({self.trainable / 1e6:.2f} M)"),
            ("output stride", str(self.output_stride)),
            ("input", f"{self.input_size[0]} x {self.input_size[1]}"),
            ("GFLOPs", f"{self.flops / 1e9:.2f} (= {self.flops / 2e9:.2f} G multiply-adds)"),
        ]
        if self.backbone_flops is not None:
            rest = self.flops - self.backbone_flops
            rows += [
                ("backbone GFLOPs", f"{self.backbone_flops / 1e9:.2f}"),
                ("decoder GFLOPs (total - backbone)", f"{rest / 1e9:.2f}"),
            ]
        return markdown_table(["", ""], rows)


def count_flops(net: nn.Module, input_size: tuple[int, int], device: str = "meta") -> int:
    """FLOPs of one forward pass of a ``1 x 3 x H x W`` input (in eval mode)."""
    return count_flops_by_module(net, input_size, device)[0]


def count_flops_by_module(
    net: nn.Module, input_size: tuple[int, int], device: str = "meta"
) -> tuple[int, dict[str, int]]:
    """Total FLOPs of one forward pass and the FLOPs inside each submodule, keyed by its name
    (``""`` is the whole network, ``"backbone"`` a child, ``"backbone.layer1"`` ...)."""
    was_training = net.training
    net.eval()
    x = torch.zeros(1, 3, *input_size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x)
    net.train(was_training)
    root = type(net).__name__
    per_module = {
        name.removeprefix(root).removeprefix("."): int(sum(ops.values()))
        for name, ops in counter.get_flop_counts().items()
        if name != "Global"
    }
    return int(counter.get_total_flops()), per_module


def summarise(net: nn.Module, input_size: tuple[int, int]) -> ModelSummary:
    params = sum(p.numel() for p in net.parameters())
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    device = next(net.parameters()).device.type
    total, per_module = count_flops_by_module(net, input_size, device=device)
    return ModelSummary(
        name=type(net).__name__,
        params=params,
        trainable=trainable,
        output_stride=getattr(net, "output_stride", None),
        input_size=input_size,
        flops=total,
        backbone_flops=per_module.get("backbone") if hasattr(net, "backbone") else None,
    )


@dataclass
class Options:
    """Options of ``segbench summary``; the other arguments are those of ``segbench fit``
    (``--config``, ``--model.net.init_args.*``).

    Args:
        input_size: input height and width (``--input_size 512 512``).
    """

    input_size: tuple[int, int] = (512, 512)


def main(argv: list[str]) -> None:
    parser = command_parser(
        "segbench summary",
        "Parameters, output stride and FLOPs of the network a config builds.",
        usage="segbench summary --config FILE.yaml [segbench fit overrides] [--input_size H W]",
    )
    parser.add_class_arguments(Options, nested_key=None, as_group=True)
    _, own, fit = split_argv(argv, option_keys(Options), runs=False)
    options = options_of(Options, parser.parse_args(own))
    if not fit:
        parser.error("give a config: --config FILE.yaml")
    with torch.device("meta"):
        task, _, _ = build(fit)
    summary = summarise(task.net, options.input_size)
    sys.stdout.write(summary.markdown())
