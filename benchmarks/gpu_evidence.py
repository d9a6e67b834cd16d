"""``make gpu-evidence``: segbench on one lent GPU, in one prepared command of at most 9 minutes.

The GPU machine this project borrows (one H200, 15 minutes a session, start-up included, at most
10 minutes a command) runs its own Python 3.12 and packages, with no network: ``make gpu-wheels``
downloads here the few pure-Python wheels it lacks (jsonargparse and what its signatures need)
into ``.whl/``, which travels with the working tree; ``make gpu-evidence`` installs them there and
runs this script from the working tree under the image's torch. In order, each stage with a
deadline inside ``--budget`` seconds, so that the call ends in time whatever a stage does:

1. **environment**: Python, torch, CUDA, the device, the cores, the carried wheels;
2. **matmul**: the card's dense bf16 rate, measured (the MFU's denominator);
3. **ParseNet's context claims at 512 px** first, the call's main job (``SCALE=context``:
   ``cue_gap`` 0.3, 12 epochs of 2,000 scenes, rendered with every core): FCN-32s vs ParseNet
   early fusion x seeds 0-2, the six fits at once on the one GPU (``segbench sweep --jobs 6``);
   seeds 3-4 as well when the first three fitted fast enough to leave the time; then the test
   condition on the trained baseline (``segbench erf`` on ``fcn32s-s0``, then ``segbench
   cue-distance --radii`` half the side of its empirical field, on the test scenes) and
   ``segbench claims --scale context``;
4. **GPU check, eager** (``benchmarks/gpu_check.py``): every architecture at paper width and crop,
   bf16-mixed and channels_last: images/s, peak memory, MFU, one validation image of the paper's
   size through the sliding window; 16-mixed is skipped (same tensor-core rate on Hopper);
5. **GPU check, compiled**: the same rows under ``torch.compile`` (Inductor) while time is left;
   the rows that do not fit say so;
6. **DDP** over NCCL needs two GPUs: with one, the output says it was not run.

Everything comes back in at most 8 files under ``--out`` (``$OUT`` on the GPU machine):
``gpu-evidence.md`` (every table), ``gpu-evidence.json``, ``gpu-evidence.log`` and
``runs.tar.gz`` (the run directories without checkpoints, the sweep's logs and reports, the erf
and cue-distance outputs).

``--dry-run`` runs every stage on the CPU at toy size (64-px scenes, width 1/16, one epoch, one
seed, compile with the ``eager`` backend): the test suite runs it, since CI has no GPU, with
``--compiled_archs FCN`` (dynamo's tracing alone takes seconds an architecture).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_check  # noqa: E402

from segbench.models import architectures  # noqa: E402

log = logging.getLogger("gpu-evidence")

ABLATION = "parsenet"
SCALE = "context"
GROUP = "parsenet-context-context"  # the ablation's group + "-" + the scale
VARIANTS = ("fcn32s", "parsenet_early")
FIRST_SEEDS = (0, 1, 2)
MORE_SEEDS = (3, 4)
#: Fit arguments of every run on the GPU: 6 concurrent fits share 16 cores (2 loader workers each)
#: and log nowhere but their run directory (no W&B on that machine).
GPU_FIT = ["--run.wandb", "disabled", "--data.init_args.num_workers", "2"]
#: The same runs at toy size on the CPU (--dry-run).
DRY_FIT = [
    "--run.wandb", "disabled", "--trainer.accelerator", "cpu", "--trainer.precision", "32-true",
    "--trainer.max_epochs", "1", "--model.net.init_args.width", "0.0625",
    "--data.init_args.image_size", "[64, 64]", "--data.init_args.num_train", "8",
    "--data.init_args.num_val", "4", "--data.init_args.num_test", "4",
    "--data.init_args.batch_size", "4", "--data.init_args.num_workers", "0",
]  # fmt: skip


class Clock:
    """Seconds since the start, and each stage's deadline within the budget."""

    def __init__(self, budget: float) -> None:
        self.start = time.perf_counter()
        self.budget = budget

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self, until: float | None = None) -> float:
        """Seconds left before ``until`` (a share of the budget, or the budget itself)."""
        return (self.budget if until is None else until) - self.elapsed()


def run(cmd: list[str], *, timeout: float, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``cmd`` from the repository root, logging its output; past ``timeout`` seconds its
    whole process group is stopped (SIGTERM, then SIGKILL 15 s later). ``(exit code, output)``;
    124 when it was stopped."""
    if timeout < 5:
        log.warning("not run (%.0f s left): %s", timeout, " ".join(cmd))
        return 124, ""
    log.info("$ %s   (at most %.0f s)", " ".join(cmd), timeout)
    t0 = time.perf_counter()
    process = subprocess.Popen(
        cmd,
        cwd=REPO,
        env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
        code = process.returncode
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
        code = 124
        log.warning("stopped at its deadline after %.0f s", time.perf_counter() - t0)
    for line in output.splitlines():
        log.info("    %s", line)
    log.info("exit %d after %.0f s", code, time.perf_counter() - t0)
    return code, output


def segbench(*args: str) -> list[str]:
    return [sys.executable, "-m", "segbench.cli", *args]


# -- the stages -----------------------------------------------------------------------------
def environment(opts: argparse.Namespace) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name() if opts.device == "cuda" else "CPU (dry run)",
        "gpus": torch.cuda.device_count() if opts.device == "cuda" else 0,
        "cores": os.cpu_count(),
    }
    for name in ("torchvision", "lightning", "torchmetrics", "jsonargparse", "numpy", "scipy"):
        with contextlib.suppress(Exception):
            facts[name] = __import__(name).__version__
    wheels = sorted((REPO / ".whl").glob("*.whl"))
    facts["wheels"] = {w.name: w.stat().st_size for w in wheels}
    return facts


def matmul(opts: argparse.Namespace) -> float:
    n = 512 if opts.dry_run else 8192
    rate = gpu_check.matmul_tflops(
        torch.device(opts.device), n=n, repeats=3 if opts.dry_run else 10
    )
    log.info("dense bf16 matmul %d^3: %.1f TFLOP/s (mean of the timed products)", n, rate)
    return rate


def check_rows(
    opts: argparse.Namespace, clock: Clock, until: float, compiled: bool
) -> list[gpu_check.Row]:
    """One row per architecture: bf16-mixed, channels_last, eager or compiled."""
    check_opts = SimpleNamespace(
        device=opts.device,
        width=1 / 16 if opts.dry_run else None,
        crop=64 if opts.dry_run else None,
        batch=2 if opts.dry_run else None,
        steps=1 if opts.dry_run else 10,
        warmup=1 if opts.dry_run else 3,
        compile_backend="eager" if opts.dry_run else "inductor",
        peak_tflops=opts.peak_tflops,
        verbose=True,
    )
    rows = []
    for arch in opts.compiled_archs if compiled else opts.archs:
        if clock.left(until) < (60 if compiled and not opts.dry_run else 5):
            rows.append(gpu_check.Row(arch, "bf16-mixed, channels_last, compile" if compiled
                                      else "bf16-mixed, channels_last", 0, 0,
                                      error="skipped: the call's time budget"))  # fmt: skip
            continue
        row = gpu_check.check(arch, "bf16-mixed", compiled, check_opts)
        rows.append(row)
        log.info("%s %s: %s img/s, %s GB, warm-up %s s, graphs %s %s", arch, row.setting,
                 row.images_per_s, row.peak_memory_gb, row.warmup_seconds, row.graphs,
                 row.error)  # fmt: skip
        if opts.device == "cuda":
            torch.cuda.empty_cache()
    return rows


def sweep(opts: argparse.Namespace, seeds: tuple[int, ...], timeout: float) -> float:
    """FCN-32s vs ParseNet early fusion at SCALE=context for ``seeds``, all fits at once."""
    t0 = time.perf_counter()
    cmd = segbench(
        "sweep", "--ablation", ABLATION, "--scale", SCALE, "--variants", *VARIANTS,
        "--seeds", *map(str, seeds), "--jobs", str(len(VARIANTS) * len(seeds)),
        "--root", str(opts.runs), "--out", str(opts.runs / "report" / GROUP),
        "--", *(DRY_FIT if opts.dry_run else GPU_FIT),
    )  # fmt: skip
    run(cmd, timeout=timeout)
    return time.perf_counter() - t0


def tool_result(opts: argparse.Namespace, tool: str, *args: str, timeout: float) -> dict | str:
    """Run ``segbench TOOL ARGS --out RUNS/TOOL`` and return its one model's result from
    ``TOOL.json``, or why there is none."""
    out = opts.runs / tool
    code, _ = run(segbench(tool, *args, "--out", str(out)), timeout=timeout)
    path = out / f"{tool}.json"
    if code != 0 or not path.is_file():
        return f"segbench {tool} exit {code}"
    return next(iter(json.loads(path.read_text()).values()))  # {model: result}


def condition(opts: argparse.Namespace, timeout: float) -> dict[str, Any]:
    """ParseNet's test condition on the trained baseline: its empirical field (``segbench erf``
    on ``fcn32s-s0``), then the share of boat and car pixels beyond half its side from their cue
    (``segbench cue-distance`` on the test scenes)."""
    clock = Clock(timeout)
    baseline = opts.runs / GROUP / f"{VARIANTS[0]}-s{FIRST_SEEDS[0]}"
    out: dict[str, Any] = {"baseline": str(baseline.relative_to(opts.runs))}
    erf_args = ["--images", "1", "--patch", "16", "--stride", "16"] if opts.dry_run else []
    erf = tool_result(opts, "erf", str(baseline), "--device", opts.device, "--canvas", "0",
                      "--record", "true", *erf_args, timeout=clock.left())  # fmt: skip
    if isinstance(erf, str):
        return {**out, "error": erf}
    side = float(erf["empirical"]["side"])
    out["erf"] = {
        "image_size": erf["image_size"],
        "empirical_fraction": erf["empirical"]["fraction"],
        "empirical_side": side,
        "theoretical_fraction": erf["theoretical"]["fraction"],
    }
    out["radius"] = radius = max(1, round(side / 2))
    cue = tool_result(opts, "cue-distance", str(baseline), "--split", "test", "--radii",
                      str(radius), timeout=clock.left())  # fmt: skip
    if isinstance(cue, str):
        return {**out, "error": cue}
    out["classes"] = {
        c["name"]: {"pixels": c["pixels"], "percentiles": c["percentiles"],
                    "beyond": c["beyond"]}
        for c in cue["classes"]
    }  # fmt: skip
    shares = [next(iter(c["beyond"].values())) for c in out["classes"].values() if c["pixels"]]
    out["holds"] = bool(shares) and min(shares) >= 0.9
    return out


def claims(opts: argparse.Namespace, timeout: float) -> str:
    out = opts.runs / "claims-context.md"
    code, _ = run(
        segbench(
            "claims",
            "--scale",
            SCALE,
            "--root",
            str(opts.runs),
            "--out",
            str(out),
            *(["--other_settings"] if opts.dry_run else []),
        ),  # toy runs: not the recipe's
        timeout=timeout,
    )
    if code != 0 or not out.is_file():
        return f"segbench claims exit {code}\n"
    # Only the ParseNet rows have runs at this scale: the other papers' rows go.
    keep = [line for line in out.read_text().splitlines()
            if not line.startswith("| [") or line.startswith(f"| [{ABLATION}]")]  # fmt: skip
    return "\n".join(keep) + "\n"


# -- the output -----------------------------------------------------------------------------
def markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = [
        "# GPU evidence",
        "",
        f"{env['device']}, {env.get('gpus', 0)} GPU(s), {env['cores']} cores; Python "
        f"{env['python']}, torch {env['torch']} (CUDA {env['cuda']}), torchvision "
        f"{env.get('torchvision')}, lightning {env.get('lightning')}, jsonargparse "
        f"{env.get('jsonargparse')}. Carried wheels: "
        + (", ".join(f"{k} ({v / 1024:.0f} KiB)" for k, v in env["wheels"].items()) or "none"),
        "",
        f"Dense bf16 matmul, measured: **{result['matmul_tflops']:.1f} TFLOP/s** (the MFU's "
        "denominator; MFU = 3 x forward FLOPs x images/s over it).",
        "",
        "## Every architecture at paper width and crop (bf16-mixed, channels_last)",
        "",
        gpu_check.markdown(result["rows"], env["device"]),
        "16-mixed: not run (the same tensor-core rate as bf16 on this card; the call's time "
        "went to the ParseNet claims). "
        + (
            "DDP over NCCL: not run (one GPU; it needs two)."
            if env.get("gpus", 0) < 2
            else "DDP: see the last row."
        ),
        "",
        "## ParseNet's context claims at 512 px (SCALE=context)",
        "",
    ]
    cond = result.get("condition", {})
    if "erf" in cond:
        e = cond["erf"]
        lines += [
            f"Test condition, measured on `{cond['baseline']}`: its empirical field covers "
            f"{100 * e['empirical_fraction']:.1f}% of the {e['image_size'][0]}-px image (side "
            f"{e['empirical_side']:.0f} px; theoretical field {100 * e['theoretical_fraction']:.1f}"
            f"%), so the radius is half its side, {cond['radius']} px.",
            "",
            "| class | pixels | p10 / p50 / p90 distance to its cue (px) | beyond the radius |",
            "|---|---|---|---|",
        ]
        for name, c in cond.get("classes", {}).items():
            p = c["percentiles"]
            share = next(iter(c["beyond"].values()), None)
            lines.append(
                f"| {name} | {c['pixels']} | "
                + " / ".join(f"{v:.0f}" for v in p.values())
                + f" | {'–' if share is None else f'{100 * share:.1f}%'} |"
            )
        verdict = "holds" if cond.get("holds") else "fails"
        lines += ["", f"Condition (at least 90% of boat and car pixels beyond it): **{verdict}**."]
    if cond.get("error"):
        lines += ["", f"Condition not measured: {cond['error']}."]
    lines += [
        "",
        f"Seeds fitted: {result.get('seeds')}; sweep wall time {result.get('sweep_seconds')}.",
        "",
        result.get("claims", ""),
        f"Total {result['seconds']:.0f} s of the {result['budget']:.0f} s budget.",
        "",
    ]
    return "\n".join(lines)


def pack(opts: argparse.Namespace) -> None:
    """The run directories without checkpoints, the sweep's logs and reports, erf and
    cue-distance: one tarball."""
    if not opts.runs.is_dir():
        return
    with tarfile.open(opts.out / "runs.tar.gz", "w:gz") as tar:
        tar.add(
            opts.runs,
            arcname="gpu-evidence-runs",
            filter=lambda info: None if info.name.endswith((".ckpt", ".lock")) else info,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="every stage on the CPU, toy size")
    parser.add_argument(
        "--out", type=Path, default=Path(os.environ.get("OUT", "results/gpu-evidence"))
    )
    parser.add_argument("--runs", type=Path, help="run directories (default: a folder in /tmp)")
    parser.add_argument("--budget", type=float, default=510, help="seconds for the whole call")
    parser.add_argument("--archs", nargs="+", default=None, help="default: every architecture")
    parser.add_argument("--compiled_archs", nargs="+", default=None,
                        help="the compiled rows' architectures (default: --archs)")  # fmt: skip
    opts = parser.parse_args(argv)
    opts.device = "cuda" if torch.cuda.is_available() and not opts.dry_run else "cpu"
    if not opts.dry_run and opts.device != "cuda":
        parser.error("no GPU here: run with --dry-run to check the script on the CPU")
    opts.archs = opts.archs or sorted(architectures())
    opts.compiled_archs = opts.compiled_archs or opts.archs
    opts.out.mkdir(parents=True, exist_ok=True)
    opts.runs = (opts.runs or Path("/tmp/segbench-gpu-evidence")).resolve()
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout),
                  logging.FileHandler(opts.out / "gpu-evidence.log", mode="w")],
    )  # fmt: skip
    os.environ.setdefault("WANDB_MODE", "disabled")
    clock = Clock(opts.budget)
    # The deadlines, as shares of the budget (for 510 s: 383, 459, 485, 490): the claims first.
    # Sizing (2026-12-04, H200): a width-1/4 ParseNet trains 640 images/s at 512 px alone (bare
    # bf16 step, batch 8); the six fits are 6 x 24,000 images, ~225 s at that rate shared, plus
    # start-up, rendering (2,600 scenes in 14 s on 16 cores) and validation: ~260 s of the 375.
    # The erf (16,384 perturbed 512-px forwards) and cue-distance take ~20-40 s; the eager
    # rows took 17 s; each compiled row ~30-40 s (DRN: 29.7 s of warm-up).
    sweep_until, condition_until, eager_until, compile_until = (
        opts.budget * f for f in (0.75, 0.90, 0.95, 0.96)
    )

    result: dict[str, Any] = {"budget": opts.budget, "dry_run": opts.dry_run}
    result["environment"] = environment(opts)
    log.info("environment: %s", json.dumps(result["environment"]))
    result["matmul_tflops"] = opts.peak_tflops = matmul(opts)

    first_seeds = (0,) if opts.dry_run else FIRST_SEEDS
    first = sweep(opts, first_seeds, clock.left(sweep_until))
    seeds = list(first_seeds)
    result["sweep_seconds"] = f"{first:.0f} s for seeds {seeds}"
    # Seeds 3-4 (4 fits at once) take at most as long as seeds 0-2 (6 at once) did.
    if not opts.dry_run and first + 15 < clock.left(sweep_until):
        more = sweep(opts, MORE_SEEDS, clock.left(sweep_until))
        seeds += MORE_SEEDS
        result["sweep_seconds"] += f", {more:.0f} s for seeds 3-4"
    else:
        log.info("seeds 3-4: not run (seeds 0-2 took %.0f s, %.0f s left before the deadline)",
                 first, clock.left(sweep_until))  # fmt: skip
    result["seeds"] = seeds
    result["condition"] = condition(opts, clock.left(condition_until))
    result["claims"] = claims(opts, max(30.0, clock.left(condition_until)))
    result["rows"] = check_rows(opts, clock, eager_until, compiled=False)
    result["rows"] += check_rows(opts, clock, compile_until, compiled=True)

    result["seconds"] = clock.elapsed()
    text = markdown(result)
    (opts.out / "gpu-evidence.md").write_text(text)
    rows = [vars(r) for r in result.pop("rows")]
    (opts.out / "gpu-evidence.json").write_text(json.dumps({**result, "rows": rows}, indent=1))
    pack(opts)
    sys.stdout.write(text)
    failed = [r for r in rows if r["error"] and not r["error"].startswith("skipped")]
    return 1 if failed or "error" in result["condition"] else 0


if __name__ == "__main__":
    sys.exit(main())
