"""segbench's DRN-C-26 against the official fyu/drn segmenter, timed in one process, alternating.

``python benchmarks/drn_official.py [--size 512] [--batch 2] [--repeats 5]`` (``make
bench-drn``): a training step (forward, loss, backward, SGD step) of fyu/drn's ``DRNSeg`` with
``drn_c_26`` (19 classes: Cityscapes) and of segbench's ``DRN`` at the same depth and
switches, on the same random batch, alternating model by model so that both see the same
machine state; in float32 NCHW and in segbench's fast CPU setting (bf16 autocast, channels-last
weights and inputs) for both. Prints the median seconds per step and the ratio.

The official structure below is rebuilt from fyu/drn's ``drn.py`` (``BasicBlock``, ``DRN`` with
``arch='C'``, ``drn_c_26``) and ``segment.py`` (``DRNSeg``: the trunk without its pooling and
classifier, a 1x1 ``seg`` convolution, a frozen bilinear grouped ``ConvTranspose2d(16, stride 8,
padding 4)`` and ``LogSoftmax``), https://github.com/fyu/drn, Copyright (c) 2017, Fisher Yu, BSD
3-Clause License. Only what DRN-C-26 uses is kept; the module names and the layer order are the
official ones.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from segbench.models import drn as segbench_drn  # noqa: E402
from segbench.models.layers.upsample import bilinear_kernel  # noqa: E402
from segbench.numerics import to_channels_last  # noqa: E402


# -- fyu/drn (drn.py, segment.py), DRN-C-26 only ---------------------------------------------
def conv3x3(in_planes, out_planes, stride=1, padding=1, dilation=1):
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=padding, bias=False,
                     dilation=dilation)  # fmt: skip


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, dilation=(1, 1),
                 residual=True):  # fmt: skip
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride, padding=dilation[0], dilation=dilation[0])
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, padding=dilation[1], dilation=dilation[1])
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.residual = residual

    def forward(self, x):
        residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            residual = self.downsample(x)
        if self.residual:
            out += residual
        return self.relu(out)


class OfficialDRNC26(nn.Module):
    """``drn_c_26``'s trunk (``DRN(BasicBlock, [1, 1, 2, 2, 2, 2, 1, 1], arch='C')``)."""

    def __init__(self, channels=(16, 32, 64, 128, 256, 512, 512, 512)):
        super().__init__()
        layers = [1, 1, 2, 2, 2, 2, 1, 1]
        self.inplanes = channels[0]
        self.conv1 = nn.Conv2d(3, channels[0], 7, stride=1, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(BasicBlock, channels[0], layers[0], stride=1)
        self.layer2 = self._make_layer(BasicBlock, channels[1], layers[1], stride=2)
        self.layer3 = self._make_layer(BasicBlock, channels[2], layers[2], stride=2)
        self.layer4 = self._make_layer(BasicBlock, channels[3], layers[3], stride=2)
        self.layer5 = self._make_layer(BasicBlock, channels[4], layers[4], dilation=2,
                                       new_level=False)  # fmt: skip
        self.layer6 = self._make_layer(BasicBlock, channels[5], layers[5], dilation=4,
                                       new_level=False)  # fmt: skip
        self.layer7 = self._make_layer(BasicBlock, channels[6], layers[6], dilation=2,
                                       new_level=False, residual=False)  # fmt: skip
        self.layer8 = self._make_layer(BasicBlock, channels[7], layers[7], dilation=1,
                                       new_level=False, residual=False)  # fmt: skip
        self.out_dim = channels[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / n))

    def _make_layer(self, block, planes, blocks, stride=1, dilation=1, new_level=True,
                    residual=True):  # fmt: skip
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        first = (1, 1) if dilation == 1 else (dilation // 2 if new_level else dilation, dilation)
        layers = [block(self.inplanes, planes, stride, downsample, dilation=first,
                        residual=residual)]  # fmt: skip
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, residual=residual,
                                dilation=(dilation, dilation)))  # fmt: skip
        return nn.Sequential(*layers)


class OfficialDRNSeg(nn.Module):
    """``segment.py``'s ``DRNSeg`` around ``drn_c_26``."""

    def __init__(self, classes: int):
        super().__init__()
        model = OfficialDRNC26()
        self.base = nn.Sequential(*list(model.children()))
        self.seg = nn.Conv2d(model.out_dim, classes, kernel_size=1, bias=True)
        n = self.seg.kernel_size[0] * self.seg.kernel_size[1] * self.seg.out_channels
        self.seg.weight.data.normal_(0, math.sqrt(2.0 / n))
        self.seg.bias.data.zero_()
        up = nn.ConvTranspose2d(classes, classes, 16, stride=8, padding=4, groups=classes,
                                bias=False)  # fmt: skip
        up.weight.data.copy_(bilinear_kernel(16).expand_as(up.weight))  # = fill_up_weights
        up.weight.requires_grad = False
        self.up = up
        self.softmax = nn.LogSoftmax(dim=1)

    def forward(self, x):
        x = self.seg(self.base(x))
        return self.softmax(self.up(x)), x


# -- the comparison --------------------------------------------------------------------------
def make_step(kind: str, fast: bool, batch: int, size: int, classes: int):
    torch.manual_seed(0)
    if kind == "official":
        net = OfficialDRNSeg(classes)
    else:
        net = segbench_drn.DRN(classes, depth=18, remove_max_pooling=True, add_levels_78=True,
                          remove_residual_78=True)  # fmt: skip
    if fast:
        to_channels_last(net)
    memory_format = torch.channels_last if fast else torch.contiguous_format
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=memory_format)
    y = torch.randint(0, classes, (batch, size, size))
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=1e-9,
                          momentum=0.9, weight_decay=1e-4)  # fmt: skip
    nll = nn.NLLLoss(ignore_index=255)
    ce = nn.CrossEntropyLoss(ignore_index=255)
    net.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        bf16 = torch.autocast("cpu", dtype=torch.bfloat16)
        with bf16 if fast else contextlib.nullcontext():
            out = net(x)
            loss = nll(out[0].float(), y) if kind == "official" else ce(out["out"].float(), y)
        loss.backward()
        opt.step()

    params = sum(p.numel() for p in net.parameters() if p.requires_grad)  # the frozen `up`: no
    return step, params


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, default=19)
    parser.add_argument("--repeats", type=int, default=5)
    opts = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; DRN-C-26, "
          f"{opts.classes} classes, batch {opts.batch}, {opts.size} x {opts.size}")  # fmt: skip
    print("| setting | official s/step | segbench s/step | segbench / official (time) "
          "| trainable params |")  # fmt: skip
    print("|---|---|---|---|---|")
    for fast in (False, True):
        steps = {k: make_step(k, fast, opts.batch, opts.size, opts.classes)
                 for k in ("official", "segbench")}  # fmt: skip
        for step, _ in steps.values():
            step()  # warm-up
        times: dict[str, list[float]] = {k: [] for k in steps}
        for _ in range(opts.repeats):
            for k, (step, _) in steps.items():
                t0 = time.perf_counter()
                step()
                times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        params = {k: p for k, (_, p) in steps.items()}
        assert params["official"] == params["segbench"], params
        name = "bf16 autocast + channels_last" if fast else "float32, NCHW"
        print(f"| {name} | {med['official']:.3f} | {med['segbench']:.3f} | "
              f"{med['segbench'] / med['official']:.3f} | {params['segbench']:,} |")  # fmt: skip


if __name__ == "__main__":
    main()
