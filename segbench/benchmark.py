"""``segbench benchmark --config FILE.yaml [overrides] [options]``: where the training time goes.

For the configured network, data, precision (``trainer.precision``) and memory format
(``model.channels_last``), each as the median and interquartile range over repeats:

* ``step``: the bare training step (forward, loss, backward, the configured optimiser's step)
  on a random batch of the configured size: no loader, logging, metrics or checkpointing;
* ``baseline``: the same bare step in float32 and contiguous (NCHW) format: what the fast
  settings are measured against;
* ``loop``: the whole ``segbench fit`` loop (loader, step, logging, metrics, progress bar,
  checkpointing, exactly as configured) over ``--loop_steps`` steps, validation excluded, timed
  per step after ``--warmup`` steps; ``loop / step`` is the loop's overhead ratio (1.0: free);
* ``loader``: the training loader alone;
* ``forward``: inference (eval mode, no autograd);
* ``sizes``: the bare step and its peak memory at each of ``--sizes`` (square inputs), as a
  table and, with ``--out DIR``, a plot (``benchmark_sizes.png``);
* ``compile``: the bare step eager and compiled (``torch.compile``, ``--compile_mode``; what
  ``model.compile`` does), timed alternately, one step of each in turn, in one process, so a
  drift of the machine's speed falls on both; the compiled row notes the compilation's seconds
  (its first ``--warmup`` steps less as many steady steps) and the speed-up.

Peak memory is ``torch.cuda.max_memory_allocated`` on a GPU; on a CPU it is the process's peak
resident memory so far (``ru_maxrss``: Python, torch and the data included, so an upper bound;
``--sizes`` are measured in increasing order, so each row is that size's peak).
Benchmarks are for idle machines: anything else running on the cores distorts them.
"""

from __future__ import annotations

import contextlib
import json
import resource
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

import lightning as L
import torch

from segbench.cli.lightning import SegbenchCLI, build
from segbench.numerics import resolve_precision, to_channels_last, usable_device
from segbench.options import command_parser, option_keys, options_of, split_argv
from segbench.rundir import atomic_write_files, json_writer, text_writer
from segbench.tables import markdown_table
from segbench.visualize import drawing_writer


@dataclass
class Timing:
    """Images/s of one measurement: median and interquartile range over repeats."""

    what: str
    images_per_s: float
    iqr: tuple[float, float]
    repeats: int
    batch_size: int
    input_size: tuple[int, int]
    setting: str
    peak_memory_mb: float | None = None
    notes: dict[str, float] = field(default_factory=dict)


def _stats(what: str, seconds: list[float], images: int, **kw) -> Timing:
    rates = sorted(images / s for s in seconds)
    # "inclusive": quartiles within the measured rates ("exclusive", the default, extrapolates
    # past them with few repeats: 2 repeats of 7 and 11 images/s gave an IQR of -1.8 to 15.8).
    q = statistics.quantiles(rates, n=4, method="inclusive") if len(rates) > 1 else [rates[0]] * 3
    return Timing(what, statistics.median(rates), (q[0], q[2]), len(rates), **kw)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_repeats(
    step: Callable[[], None], repeats: int, warmup: int, device: torch.device
) -> list:
    for _ in range(warmup):
        step()
    _sync(device)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        _sync(device)
        out.append(time.perf_counter() - t0)
    return out


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, float]]:
    """``{"mb": peak}`` once the block has run (see the module docstring)."""
    box: dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    yield box
    if device.type == "cuda":
        box["mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:  # the process's peak so far: measure growing sizes in increasing order
        box["mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def _autocast(device: torch.device, precision: str):
    if precision.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision.startswith("16"):
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def bare_step(
    task,
    *,
    batch_size: int,
    input_size: tuple[int, int],
    device: torch.device,
    precision: str,
    channels_last: bool,
    train: bool = True,
) -> Callable[[], None]:
    """A training step (or inference, ``train=False``) of ``task`` on a fixed random batch."""
    net = task.net.to(device)
    task.to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        to_channels_last(net)
    x = torch.randn(batch_size, 3, *input_size, device=device)
    x = x.contiguous(memory_format=memory_format)
    y = torch.randint(0, task.num_classes, (batch_size, *input_size), device=device)
    if not train:
        net.eval()

        def infer() -> None:
            with torch.inference_mode(), _autocast(device, precision):
                net(x)

        return infer
    net.train()
    # The configured optimiser (its weight decay, momentum, foreach, ...), as `fit` steps it.
    opt = task.make_optimizer()
    for group in opt.param_groups:  # the same arithmetic; weights stay put on the random batch
        group["lr"] = 1e-9
    scaler = torch.amp.GradScaler(device.type, enabled=precision.startswith("16"))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with _autocast(device, precision):
            loss = task.compute_loss(net(x), {"image": x, "mask": y})["loss"]
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    return step


class _StepTimes(L.Callback):
    """Seconds between consecutive training-batch ends (loading included)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._last: float | None = None
        self.batch_size = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._last is not None and batch_idx > 0:
            self.times.append(now - self._last)
        self._last = now
        self.batch_size = int(batch["image"].shape[0])


def loop_times(args: list[str], steps: int) -> tuple[list[float], int]:
    """Per-step seconds of ``segbench fit args`` for ``steps`` steps, validation off, in a
    temporary run directory."""
    timer = _StepTimes()
    with tempfile.TemporaryDirectory(prefix="segbench-benchmark-") as root:
        overrides = [
            "--run.root", root, "--run.wandb", "disabled", "--run.name", "loop",
            "--trainer.max_steps", str(steps), "--trainer.limit_val_batches", "0",
            "--trainer.num_sanity_val_steps", "0",
        ]  # fmt: skip
        with warnings.catch_warnings():
            # Validation is off, so the best checkpoint's key never comes (the loop keeps its
            # checkpointing, which it measures): Lightning's warning about it says nothing here.
            warnings.filterwarnings("ignore", r"`ModelCheckpoint\(monitor=.*could not find the")
            SegbenchCLI(
                args=["fit", *args, *overrides],
                trainer_defaults={"callbacks": [timer]},
            )
    return timer.times, timer.batch_size


Measurement = Literal["step", "baseline", "loop", "loader", "forward", "sizes", "compile"]


@dataclass
class Options:
    """Options of ``segbench benchmark``; the other arguments are those of ``segbench fit``.

    Args:
        what: the measurements (``--what step loop``).
        input_size: input height and width of the bare steps (default: the training crop).
        batch_size: default: the data module's.
        repeats: timed steps of a bare step.
        warmup: untimed steps first.
        loop_steps: steps of the timed fit.
        loader_batches: batches the loader is timed over.
        sizes: input sizes of ``--what sizes``.
        device: ``cuda`` or ``cpu`` (default: ``cuda`` where there is one).
        compile_mode: ``torch.compile``'s mode of ``--what compile``.
        out: write ``benchmark.{md,json}`` (and the sizes plot) into this folder.
        json: print JSON instead of a table.
    """

    what: list[Measurement] = field(
        default_factory=lambda: ["step", "baseline", "loop", "loader", "forward"]
    )
    input_size: tuple[int, int] | None = None
    batch_size: int | None = None
    repeats: int = 20
    warmup: int = 3
    loop_steps: int = 60
    loader_batches: int = 30
    sizes: list[int] = field(default_factory=lambda: [128, 256, 384, 512])
    device: str | None = None
    out: Path | None = None
    json: bool = False
    compile_mode: str = "default"


def main(argv: list[str]) -> None:
    parser = command_parser(
        "segbench benchmark",
        __doc__ or "",
        usage="segbench benchmark --config FILE.yaml [segbench fit overrides] [options]",
    )
    parser.add_class_arguments(Options, nested_key=None, as_group=True)
    _, own, rest = split_argv(argv, option_keys(Options), runs=False)
    known = options_of(Options, parser.parse_args(own))
    if not rest:
        parser.error("give a config: --config FILE.yaml")
    results = run(rest, known)
    text = markdown(results)
    if known.out:
        sizes = [r for r in results if r.what.startswith("size ")]
        plot = partial(plot_sizes, sizes)
        atomic_write_files({  # one version (rundir.atomic_write_files)
            known.out / "benchmark.md": text_writer(text),
            known.out / "benchmark.json": json_writer([asdict(r) for r in results]),
            known.out / "benchmark_sizes.png": drawing_writer(plot, (7, 3.5)) if sizes else None,
        })  # fmt: skip
    sys.stdout.write(
        json.dumps([asdict(r) for r in results], indent=2) + "\n" if known.json else text
    )


def training_input_size(dm: L.LightningDataModule) -> tuple[int, int]:
    """``(H, W)`` of a training sample as the configured data module makes it (after its
    augmentation's crop): the size the bare step is timed at when ``--input_size`` is not given."""
    dm.setup("fit")
    image = next(iter(dm.train_dataloader()))["image"]
    return int(image.shape[-2]), int(image.shape[-1])


def run(args: list[str], known: Options) -> list[Timing]:
    _, dm, cfg = build(args)
    device = usable_device(known.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = str(resolve_precision(cfg.trainer.get("precision") or "32-true", device.type))
    channels_last = bool(cfg.model.get("channels_last", False))
    setting = f"{precision}{', channels_last' if channels_last else ''}"
    batch_size = known.batch_size or dm.batch_size
    input_size = tuple(known.input_size) if known.input_size else training_input_size(dm)
    common = {"batch_size": batch_size, "input_size": input_size}
    results: list[Timing] = []

    def bare(what: str, prec: str, cl: bool, train: bool = True, size=input_size) -> Timing:
        t, _, _ = build(args)
        step = bare_step(t, batch_size=batch_size, input_size=size, device=device,
                         precision=prec, channels_last=cl, train=train)  # fmt: skip
        with peak_memory(device) as mem:
            seconds = timed_repeats(step, known.repeats, known.warmup, device)
        label = f"{prec}{', channels_last' if cl else ''}"
        return _stats(what, seconds, batch_size, batch_size=batch_size, input_size=size,
                      setting=label, peak_memory_mb=mem["mb"])  # fmt: skip

    if "step" in known.what or "loop" in known.what:
        results.append(bare("step", precision, channels_last))
    if "baseline" in known.what:
        results.append(bare("baseline", "32-true", False))
    if "loop" in known.what:
        times, n = loop_times(args, known.loop_steps)
        loop = _stats("loop", times[known.warmup :], n or batch_size, setting=setting, **common)
        step = next(r for r in results if r.what == "step")
        loop.notes["loop_over_step"] = loop.images_per_s / step.images_per_s
        base = next((r for r in results if r.what == "baseline"), None)
        if base is not None:
            loop.notes["loop_over_baseline"] = loop.images_per_s / base.images_per_s
        results.append(loop)
    if "loader" in known.what:
        dm.setup("fit")
        it = iter(dm.train_dataloader())
        next(it)
        seconds = []
        for _ in range(known.loader_batches):
            t0 = time.perf_counter()
            batch = next(it)
            seconds.append(time.perf_counter() - t0)
        n = int(batch["image"].shape[0])
        results.append(_stats("loader", seconds, n, batch_size=n, input_size=input_size,
                              setting=f"{dm.num_workers} workers"))  # fmt: skip
    if "forward" in known.what:
        results.append(bare("forward", precision, channels_last, train=False))
    if "compile" in known.what:
        results += compile_times(args, known, batch_size, input_size, device, precision,
                                 channels_last)  # fmt: skip
    if "sizes" in known.what:
        for s in sorted(known.sizes):
            results.append(bare(f"size {s}", precision, channels_last, size=(s, s)))
    return results


def compile_times(
    args: list[str],
    known: Options,
    batch_size: int,
    input_size: tuple[int, ...],
    device: torch.device,
    precision: str,
    channels_last: bool,
) -> list[Timing]:
    """The bare step eager and compiled, alternating (see the module): two rows."""
    size = (input_size[0], input_size[1])
    steps = {}
    for kind in ("eager", "compiled"):
        task, _, _ = build(args)  # the same seed: the same initial weights
        steps[kind] = bare_step(task, batch_size=batch_size, input_size=size,
                                device=device, precision=precision,
                                channels_last=channels_last)  # fmt: skip
        if kind == "compiled":
            task.net.compile(mode=known.compile_mode)
    first: list[float] = []
    for _ in range(max(1, known.warmup)):  # compilation happens here (forward and backward)
        t0 = time.perf_counter()
        steps["compiled"]()
        _sync(device)
        first.append(time.perf_counter() - t0)
    for _ in range(known.warmup):
        steps["eager"]()
    seconds: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(known.repeats):
        for kind in ("eager", "compiled"):
            t0 = time.perf_counter()
            steps[kind]()
            _sync(device)
            seconds[kind].append(time.perf_counter() - t0)
    label = f"{precision}{', channels_last' if channels_last else ''}"
    rows = [
        _stats(f"step, {kind}", seconds[kind], batch_size, batch_size=batch_size,
               input_size=size, setting=label + (f", compile {known.compile_mode}"
                                                 if kind == "compiled" else ""))
        for kind in ("eager", "compiled")
    ]  # fmt: skip
    steady = statistics.median(seconds["compiled"])
    rows[1].notes["compile_s"] = sum(first) - len(first) * steady
    rows[1].notes["compiled_over_eager"] = rows[1].images_per_s / rows[0].images_per_s
    return rows


def markdown(results: list[Timing]) -> str:
    lines = [
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        "",
    ]
    header = ["measure", "setting", "images/s (median)", "IQR", "peak memory (MB)", "batch",
              "input"]  # fmt: skip
    rows = [
        [
            r.what,
            r.setting,
            f"{r.images_per_s:.1f}",
            f"{r.iqr[0]:.1f}-{r.iqr[1]:.1f}",
            "" if r.peak_memory_mb is None else f"{r.peak_memory_mb:.0f}",
            r.batch_size,
            f"{r.input_size[0]}x{r.input_size[1]}",
        ]
        for r in results
    ]
    lines.append(markdown_table(header, rows).rstrip("\n"))
    notes = [f"{k} = {v:.3f}" for r in results for k, v in r.notes.items()]
    if notes:
        lines += ["", "Ratios and notes: " + ", ".join(notes) + "."]
    return "\n".join(lines) + "\n"


def plot_sizes(results: list[Timing], fig) -> None:
    sizes = [r.input_size[0] for r in results]
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(sizes, [r.images_per_s for r in results], marker="o")
    ax1.set_xlabel("input side (px)")
    ax1.set_ylabel("training images/s")
    ax2.plot(sizes, [r.peak_memory_mb or 0 for r in results], marker="o", color="C1")
    ax2.set_xlabel("input side (px)")
    ax2.set_ylabel("peak memory (MB)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.suptitle(f"training step, {results[0].setting}, batch {results[0].batch_size}")
