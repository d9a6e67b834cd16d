"""The fixed bilinear upsampling (FCN's and ParseNet's x32 and x8, DRN's x8): the grouped
transposed convolution it was vs the separable matrix form it is
(:func:`segbench.models.layers.upsample.fixed_bilinear_upsample`), forward + backward, on the CPU
or a GPU. Prints a markdown table (median milliseconds of ``--repeats``) and checks that the two
agree.

    python benchmarks/upsample_speed.py [--device cuda] [--repeats 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segbench.models.layers.upsample import bilinear_kernel, fixed_bilinear_upsample

#: name -> (batch, classes, input side, factor, padding): the score maps each model upsamples.
CASES = {
    "FCN-32s / ParseNet x32, 512 px": (8, 11, 16, 32, 16),
    "FCN-8s x8, 512 px": (8, 11, 64, 8, 4),
    "DRN x8, 896 px (Cityscapes crop)": (2, 19, 112, 8, 4),
}


def grouped_transposed(x: torch.Tensor, factor: int, padding: int) -> torch.Tensor:
    weight = bilinear_kernel(2 * factor).to(x).expand(x.shape[1], 1, -1, -1)
    return F.conv_transpose2d(x, weight, stride=factor, padding=padding, groups=x.shape[1])


def time_ms(fn, x: torch.Tensor, repeats: int, device: torch.device) -> float:
    def step() -> None:
        x.grad = None
        fn(x).square().mean().backward()

    for _ in range(3):
        step()
    seconds = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - t0)
    return 1000 * sorted(seconds)[len(seconds) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=20)
    opts = parser.parse_args(argv)
    device = torch.device(opts.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [
        f"Fixed bilinear upsampling, forward + backward, float32, on {name} (torch "
        f"{torch.__version__}); median of {opts.repeats}",
        "",
        "| score map | grouped transposed conv (ms) | separable matmuls (ms) | speed-up | "
        "max diff |",
        "|---|---|---|---|---|",
    ]
    for label, (n, c, side, factor, padding) in CASES.items():
        x = torch.randn(n, c, side, side, device=device, requires_grad=True)
        with torch.no_grad():
            diff = (grouped_transposed(x, factor, padding) - fixed_bilinear_upsample(
                x, factor, padding)).abs().max().item()  # fmt: skip
        old = time_ms(lambda t, f=factor, p=padding: grouped_transposed(t, f, p), x,
                      opts.repeats, device)  # fmt: skip
        new = time_ms(lambda t, f=factor, p=padding: fixed_bilinear_upsample(t, f, p), x,
                      opts.repeats, device)  # fmt: skip
        lines.append(f"| {label} | {old:.2f} | {new:.2f} | {old / new:.1f}x | {diff:.1e} |")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
