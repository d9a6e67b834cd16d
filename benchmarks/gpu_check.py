"""``make gpu-check``: every architecture at paper width and crop on one GPU, in a few minutes.

For each registered architecture (full width, the paper's training crop, on the synthetic
scenes' 11 classes) and each setting: bf16-mixed and 16-mixed autocast, channels-last, eager and
``torch.compile``: a few timed training steps (images/s, peak memory, and model FLOP utilisation:
``3 x`` the forward FLOPs of ``segbench summary`` per image, against the device's dense bf16/fp16
peak), then one validation image through the sliding-window protocol. With two or more GPUs it
also trains a few steps of DDP over NCCL (``segbench fit --trainer.devices 2``).

``--dry-run`` runs the same code on the CPU at 1/16 width and 64 px, one step, compile with the
``eager`` backend (no compiler): it is what the test suite runs, since CI has no GPU.
Every failure is reported in the table and makes the exit code 1; nothing stops the sweep.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from segbench.analysis.summary import count_flops  # noqa: E402
from segbench.benchmark import bare_step, peak_memory, timed_repeats  # noqa: E402
from segbench.cli.lightning import build  # noqa: E402
from segbench.errors import MissingFileError  # noqa: E402
from segbench.inference import EvalProtocol, predict_log_probs  # noqa: E402
from segbench.models import architectures  # noqa: E402

#: architecture -> (the paper's training crop, batch per GPU, the validation image of the paper's
#: data set (H, W), the sliding window's stride). Its recipe: experiments/<its module>/synthetic.
PAPER = {
    "FCN": (500, 4, (500, 500), 333),
    "ParseNet": (500, 4, (500, 500), 333),
    "DRN": (896, 2, (1024, 2048), 597),
    "DUpsampling": (512, 4, (512, 512), 341),
    "GALD": (769, 1, (1024, 2048), 513),
}

#: Dense peak TFLOP/s (bf16 = fp16, tensor cores) by device name.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


@dataclass
class Row:
    arch: str
    setting: str
    crop: int
    batch: int
    images_per_s: float | None = None
    peak_memory_gb: float | None = None
    mfu: float | None = None
    slide_seconds: float | None = None
    #: the warm-up steps (the first one compiles, under ``torch.compile``)
    warmup_seconds: float | None = None
    #: compiled rows: the graphs Dynamo compiled for the training forward (1: no graph break)
    graphs: int | None = None
    error: str = ""


def matmul_tflops(device: torch.device, n: int = 8192, repeats: int = 10) -> float:
    """The measured dense bf16 rate of ``device`` (TFLOP/s): the mean of ``repeats`` ``n x n``
    products of random matrices after three warm-ups (the MFU's denominator)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    timed_repeats(lambda: torch.mm(a, b), 0, 3, device)  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - t0) / repeats
    return 2 * n**3 / seconds / 1e12


def peak_tflops(device: torch.device, measured: float | None = None) -> float | None:
    """The MFU's denominator: ``measured`` if given, else the datasheet's dense bf16 rate."""
    if measured is not None:
        return measured
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    longest_first = sorted(PEAK_TFLOPS.items(), key=lambda kv: -len(kv[0]))
    return next((v for k, v in longest_first if k in name), None)


def build_task(arch: str, crop: int, width: float | None):
    # An architecture's experiments are named after its module: segbench/models/fcn.py, fcn/.
    paper = architectures()[arch].__module__.rsplit(".", 1)[-1]
    folder = REPO / "experiments" / paper / "synthetic"
    scale = folder / "_scale_paper.yaml"
    args = ["--config", str(folder / "base.yaml")]
    if scale.is_file():
        args += ["--config", str(scale)]
    elif width is None:  # the dry run sets its own width; the GPU check times the paper's
        raise MissingFileError(f"{scale}: the paper-scale recipe the GPU check times")
    args += ["--data.init_args.image_size", f"[{crop}, {crop}]"]
    if width is not None:
        args += ["--model.net.init_args.width", str(width)]
    task, _, _ = build(args)
    return task


def check(arch: str, precision: str, compiled: bool, opts: argparse.Namespace) -> Row:
    setting = f"{precision}, channels_last{', compile' if compiled else ''}"
    if arch not in PAPER and not (opts.crop and opts.batch):  # the dry run brings its own sizes
        missing = f"no paper sizes: add {arch!r} to PAPER in benchmarks/gpu_check.py"
        return Row(arch, setting, 0, 0, error=f"{missing} (crop, batch, val image, window stride)")
    paper_crop, paper_batch, val_size, val_stride = PAPER.get(arch, (0, 0, (0, 0), 0))
    crop = opts.crop or paper_crop
    batch = opts.batch or paper_batch
    device = torch.device(opts.device)
    row = Row(arch, setting, crop, batch)
    try:
        with torch.device("meta"):
            flops = count_flops(build_task(arch, crop, opts.width).net, (crop, crop))
        task = build_task(arch, crop, opts.width)
        step = bare_step(task, batch_size=batch, input_size=(crop, crop), device=device,
                         precision=precision, channels_last=True)  # fmt: skip
        if compiled:
            torch._dynamo.reset()  # the count below is this network's graphs alone
            torch._dynamo.utils.counters.clear()
            task.net.forward = torch.compile(task.net.forward, backend=opts.compile_backend)
        with peak_memory(device) as mem:
            t0 = time.perf_counter()
            timed_repeats(step, 0, opts.warmup, device)
            row.warmup_seconds = time.perf_counter() - t0
            seconds = timed_repeats(step, opts.steps, 0, device)
        if compiled:
            row.graphs = int(torch._dynamo.utils.counters["stats"]["unique_graphs"])
        median = sorted(seconds)[len(seconds) // 2]
        row.images_per_s = batch / median
        row.peak_memory_gb = mem["mb"] / 1024
        peak = peak_tflops(device, getattr(opts, "peak_tflops", None))
        if peak:
            row.mfu = 3 * flops * row.images_per_s / (peak * 1e12)
        # Validation: one image of the paper's size through the sliding window.
        h, w = (opts.crop * 2, opts.crop * 3) if opts.crop else val_size
        stride = opts.crop // 2 if opts.crop else val_stride
        protocol = EvalProtocol(mode="slide", crop_size=(crop, crop), stride=(stride, stride))
        image = torch.randn(1, 3, h, w, device=device).contiguous(memory_format=torch.channels_last)
        task.net.eval()
        with torch.inference_mode(), torch.autocast(device.type, dtype=_dtype(precision)):
            t0 = time.perf_counter()
            predict_log_probs(task.net, image, protocol, (h, w))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            row.slide_seconds = time.perf_counter() - t0
    except Exception as err:  # reported, and the sweep goes on
        row.error = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
        if opts.verbose:
            traceback.print_exc()
    return row


def _dtype(precision: str) -> torch.dtype:
    return torch.bfloat16 if precision.startswith("bf16") else torch.float16


def ddp_check(opts: argparse.Namespace) -> Row:
    """A few DDP steps over NCCL on two GPUs through ``segbench fit``."""
    row = Row("FCN (DDP, 2 GPUs)", "bf16-mixed, nccl", 128, 16)
    with tempfile.TemporaryDirectory() as root:
        cmd = [sys.executable, "-m", "segbench.cli", "fit", "--config",
               str(REPO / "experiments" / "quickstart.yaml"), "--trainer.accelerator", "gpu",
               "--trainer.devices", "2", "--trainer.strategy", "ddp",
               "--trainer.precision", "bf16-mixed", "--trainer.max_steps", "20",
               "--trainer.limit_val_batches", "2", "--run.root", root,
               "--run.wandb", "disabled"]  # fmt: skip
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        row.slide_seconds = time.perf_counter() - t0
        if done.returncode != 0:
            row.error = f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"
    return row


def markdown(rows: list[Row], device: str) -> str:
    def f(v, fmt):
        return "–" if v is None else format(v, fmt)

    lines = [
        f"GPU check on {device}, torch {torch.__version__}",
        "",
        "| architecture | setting | crop | batch | images/s | peak memory (GB) | MFU | "
        "slide val image (s) | warm-up (s) | graphs | error |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.arch} | {r.setting} | {r.crop} | {r.batch} | {f(r.images_per_s, '.1f')} | "
            f"{f(r.peak_memory_gb, '.2f')} | {f(r.mfu, '.1%')} | {f(r.slide_seconds, '.2f')} | "
            f"{f(r.warmup_seconds, '.1f')} | {f(r.graphs, 'd')} | {r.error} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny, one step")
    parser.add_argument("--archs", nargs="+", default=None, help="default: every architecture")
    parser.add_argument("--precisions", nargs="+", default=["bf16-mixed", "16-mixed"])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--budget", type=float, default=450, help="seconds; later checks skipped")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    parser.add_argument("--verbose", action="store_true")
    opts = parser.parse_args(argv)
    opts.device = "cuda" if torch.cuda.is_available() and not opts.dry_run else "cpu"
    opts.width, opts.crop, opts.batch = (1 / 16, 64, 2) if opts.dry_run else (None, None, None)
    opts.compile_backend = "eager" if opts.dry_run else "inductor"
    if opts.dry_run:
        opts.steps, opts.warmup = 1, 0
    elif opts.device != "cuda":
        parser.error("no GPU here: run with --dry-run to check the script on the CPU")
    start = time.perf_counter()
    rows: list[Row] = []
    archs = opts.archs or sorted(architectures())
    settings = [(p, False) for p in opts.precisions] + [(opts.precisions[0], True)]
    for arch in archs:
        for precision, compiled in settings:
            if time.perf_counter() - start > opts.budget:
                rows.append(Row(arch, precision, 0, 0, error="skipped: time budget spent"))
                continue
            rows.append(check(arch, precision, compiled, opts))
            print(f"{arch} {rows[-1].setting}: {rows[-1].images_per_s} img/s {rows[-1].error}",
                  flush=True)  # fmt: skip
    if opts.device == "cuda" and torch.cuda.device_count() >= 2:
        rows.append(ddp_check(opts))
    device = torch.cuda.get_device_name() if opts.device == "cuda" else "CPU (dry run)"
    text = markdown(rows, device) + f"\ntotal {time.perf_counter() - start:.0f} s\n"
    if opts.device == "cuda" and torch.cuda.device_count() < 2:
        text += "DDP over NCCL: skipped (one GPU).\n"
    print(text)
    if opts.out:
        opts.out.write_text(text)
    return 1 if any(r.error and not r.error.startswith("skipped") for r in rows) else 0


if __name__ == "__main__":
    os.environ.setdefault("WANDB_MODE", "disabled")
    sys.exit(main())
