"""``segbench export RUN_DIR [--ckpt best] --out FILE [--format onnx|torchscript] [--dynamic]``.

Writes the network alone, for deployment without segbench: input the normalised image
``N x 3 x H x W`` (float32), output the logits ``N x K x H x W`` (``net(x)["out"]``: no softmax, no
auxiliary head), in eval mode, float32 and contiguous (NCHW) memory format on the CPU, whatever
the run trained with (``model.channels_last``, ``trainer.precision: bf16-mixed``). The model comes
from a run directory and its checkpoint ``--ckpt`` (or ``--config FILE.yaml`` for a freshly
initialised one), as the analysis tools take theirs (:mod:`segbench.analysis.tool`). It is a
command of its own: its ``--out`` is the file it writes.

* ``--format onnx`` (``FILE.onnx``): torch's TorchScript-based ONNX exporter
  (``torch.onnx.export(..., dynamo=False)``, opset 17). Needs the ``export`` extra
  (``pip install 'segbench[export]'``: onnx and onnxruntime). The ``torch.export``-based exporter
  (``dynamo=True``, torch's default) is not used: it cannot export ParseNet with dynamic height and
  width (torch 2.14: a data-dependent guard in its global pooling) and takes 5-15 s per network
  where this one takes under a second.
* ``--format torchscript`` (``FILE.pt``): ``torch.jit.trace``, loaded with ``torch.jit.load``
  (``torch.jit.script`` does not compile the segbench networks: their backbones' type
  annotations are beyond TorchScript).

Both are *traced* at the export size ``--input_size H W`` (default: the size of the first image
of ``--split``): Python branches on the input size (the padding to a multiple of the stride) are
fixed at that size. Without ``--dynamic`` the model takes batch 1 at that size only. With
``--dynamic`` the batch, height and width axes are free and any height and width work: the
networks' padding to a multiple of their stride (and the crop of the logits back to the input's
size) is always in the traced graph, computed from the input's size
(:func:`segbench.models.base.pad_to_multiple`), so the logits have the input's size.

**The check.** The written file is run (ONNX Runtime's ``CPUExecutionProvider``, or
``torch.jit.load``) on the first image of ``--split`` at the export size and, with ``--dynamic``,
on a batch of two (the image and its mirror image) at ``(H + 19, W + 45)``, a size that is no
multiple of any stride, which the export size need not be either; the command prints
the largest absolute difference to PyTorch's logits and the share of pixels whose labels (argmax)
agree. It passes when the difference is at most ``--rtol`` (default 1e-3) times the largest
absolute PyTorch logit (plus 1e-5) and the labels agree at every pixel whose top two PyTorch
logits are further apart than twice that; a model that fails is removed (``FILE`` is written
only once it passed) and the command exits with an error. Also printed: the file size.
Where the run's data cannot be read (its folder gone, another machine) and ``--input_size`` is
given, the check's image is a synthetic one instead (:func:`synthetic_image`: seeded smooth
noise, normalised like the data), and the output and ``FILE.json`` (``check_input``) say so; the
network needs no data to be exported, only its check needs an image. Without ``--input_size``
the export size is the data image's, and an unreadable data set is an error that says to give one.

**Beside it,** ``FILE.json`` (the file name with ``.json`` appended: ``model.onnx.json``): the
class names, palette and void label, the normalisation (``mean``, ``std`` on the 0..1 scale: the
input is ``(rgb / 255 - mean) / std``), the input and output names and shapes, the format,
exporter and ``dynamic`` flag, the source (run directory, checkpoint and its training step,
whether a ``fit`` was still training the run and which: the checkpoint is then not its final
model, architecture and its arguments), the segbench and torch versions and the check's
numbers. ``--record`` stores the check's summary in the run's ``metrics.json``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import segbench
from segbench.analysis.loading import LoadedModel, load_model
from segbench.data.base import Split
from segbench.errors import ConfigError, SegbenchError, UnreadableFileError
from segbench.options import CommandParser, command_parser, option_keys, options_of, split_argv
from segbench.rundir import RunDir, atomic_paths, json_writer
from segbench.tables import markdown_table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger("segbench")

Format = Literal["onnx", "torchscript"]

#: With ``--dynamic``, the check's second size is the export size plus this (height, width):
#: no multiple of any network's stride, so the padding in the graph is exercised.
CHECK_OFFSET = (19, 45)
#: The ONNX opset written (supported by ONNX Runtime >= 1.12, TensorRT >= 8.6).
OPSET = 17
INPUT_NAME, OUTPUT_NAME = "image", "logits"
#: The absolute part of the check's tolerance (for networks whose logits are all near 0).
ATOL = 1e-5
SUFFIXES: dict[str, Format] = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript"}


class ExportCheckError(SegbenchError):
    """The exported model does not compute the network's logits."""


class Logits(nn.Module):
    """``net(x)["out"]``: the logits alone, the one output of an exported model."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)["out"]


def exportable(net: nn.Module) -> Logits:
    """A copy of ``net`` in eval mode, float32 and contiguous format, returning its logits.

    The copy keeps the forward pre-hooks :func:`segbench.numerics.to_channels_last` adds (they
    sample the input of strided 1x1 convolutions, the same function in either format)."""
    net = copy.deepcopy(net).float().to(memory_format=torch.contiguous_format)
    return Logits(net).eval()


def require_onnx() -> None:
    """Fail in one line when the ``export`` extra is not installed."""
    missing = []
    for module in ("onnx", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise SegbenchError(
            f"segbench export --format onnx needs {' and '.join(missing)}: "
            "pip install 'segbench[export]' (in a clone: pip install -e '.[export]')"
        )


@contextlib.contextmanager
def _tracing() -> Iterator[None]:
    """No gradients, and none of the tracer's warnings: a size turned into a Python value (what
    the check after the export is for) and the deprecation of TorchScript and of the
    TorchScript-based ONNX exporter (the module docstring says why they are used)."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based")
        warnings.filterwarnings("ignore", message="The feature will be removed")
        yield


def write_model(module: nn.Module, path: Path, fmt: Format, example: Tensor, dynamic: bool) -> None:
    """Trace ``module`` at ``example`` and write it to ``path`` as ``fmt``."""
    with _tracing():
        if fmt == "torchscript":
            traced = torch.jit.trace(module, example, check_trace=False)
            torch.jit.save(traced, str(path))
            return
        axes = {0: "batch", 2: "height", 3: "width"}
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes} if dynamic else None,
        )


def load_exported(path: Path, fmt: Format) -> Callable[[Tensor], Tensor]:
    """The exported model at ``path`` as a function of images to logits (ONNX Runtime's
    ``CPUExecutionProvider`` for ONNX, ``torch.jit.load`` on the CPU for TorchScript)."""
    if fmt == "torchscript":
        with _tracing():
            scripted = torch.jit.load(str(path), map_location="cpu")

        def run_scripted(images: Tensor) -> Tensor:
            with torch.no_grad():
                return scripted(images)

        return run_scripted
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run_onnx(images: Tensor) -> Tensor:
        (out,) = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})
        return torch.from_numpy(out)

    return run_onnx


def run_model(path: Path, fmt: Format, images: Tensor) -> Tensor:
    """The logits of the exported model at ``path`` for ``images``."""
    return load_exported(path, fmt)(images)


@dataclass
class Check:
    """The exported model against PyTorch on one batch."""

    batch: int
    size: tuple[int, int]
    max_abs_diff: float
    tolerance: float
    #: The share of pixels whose labels (argmax over classes) agree.
    label_agreement: float
    #: Pixels whose labels differ where PyTorch's top two logits are within 2 x tolerance.
    near_ties: int
    #: Pixels whose labels differ elsewhere (0 for a model that passes).
    disagreements: int

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.disagreements == 0


def compare(reference: Tensor, exported: Tensor, rtol: float) -> Check:
    """:class:`Check` of ``exported`` logits against ``reference`` (``N x K x H x W``)."""
    n, _, h, w = reference.shape
    if exported.shape != reference.shape:
        raise ExportCheckError(
            f"the exported model's output is {tuple(exported.shape)}, PyTorch's "
            f"{tuple(reference.shape)}"
        )
    tolerance = rtol * float(reference.abs().max()) + ATOL
    diff = (exported - reference).abs()
    max_abs_diff = float(diff.max()) if torch.isfinite(diff).all() else float("inf")
    differ = reference.argmax(1) != exported.argmax(1)
    top2 = reference.topk(2, dim=1).values if reference.shape[1] > 1 else None
    tie = (top2[:, 0] - top2[:, 1] <= 2 * tolerance) if top2 is not None else differ
    return Check(
        batch=n,
        size=(h, w),
        max_abs_diff=max_abs_diff,
        tolerance=tolerance,
        label_agreement=1.0 - float(differ.float().mean()),
        near_ties=int((differ & tie).sum()),
        disagreements=int((differ & ~tie).sum()),
    )


@dataclass
class Export:
    """One exported model: its file, its side-car and the checks it passed."""

    file: str
    format: Format
    bytes: int
    checks: list[Check]
    metadata: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    #: What the check ran on (:func:`check_image`): ``source`` ``data`` (the first image of
    #: ``split``) or ``synthetic`` (with the ``reason`` the data could not be read).
    check_input: dict[str, Any] = field(default_factory=dict)

    def markdown(self) -> str:
        lines = [
            f"Exported {self.metadata.get('architecture', 'the network')} as {self.format}: "
            f"{self.file} ({self.bytes / 2**20:.2f} MB) and {self.file}.json.",
            "",
        ]
        header = ["input", "max abs diff", "tolerance", "label agreement", "near ties", "passed"]
        rows = [
            [
                f"{c.batch} x 3 x {c.size[0]} x {c.size[1]}",
                f"{c.max_abs_diff:.3g}",
                f"{c.tolerance:.3g}",
                f"{100 * c.label_agreement:.2f} %",
                c.near_ties,
                "yes" if c.passed else "NO",
            ]
            for c in self.checks
        ]
        lines.append(markdown_table(header, rows).rstrip("\n"))
        secs = ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
        lines += [
            "",
            f"Exported model against PyTorch's logits (float32, CPU) on {self._input_words()}. "
            f"Time: {secs}.",
        ]
        return "\n".join(lines) + "\n"

    def _input_words(self) -> str:
        given = self.check_input
        if given.get("source") != "synthetic":
            return f"the first {given.get('split', 'val')} image"
        return (
            "a synthetic image (seeded smooth noise), as the "
            f"{given.get('split', 'val')} data cannot be read: {given.get('reason')}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "format": self.format,
            "bytes": self.bytes,
            "check_input": self.check_input,
            "checks": [asdict(c) | {"passed": c.passed} for c in self.checks],
            "seconds": self.seconds,
            "metadata": self.metadata,
        }

    def summary(self) -> dict[str, float]:
        """The worst difference and label agreement over the checks, and the file size."""
        key = f"export/{self.format}"
        return {
            f"{key}/max_abs_diff": max(c.max_abs_diff for c in self.checks),
            f"{key}/label_agreement": min(c.label_agreement for c in self.checks),
            f"{key}/megabytes": self.bytes / 2**20,
        }

    def plot(self, fig: Figure) -> None:
        """Each check's largest difference against its tolerance."""
        fig.set_size_inches(5, 3)
        ax = fig.subplots()
        names = [f"{c.batch}x{c.size[0]}x{c.size[1]}" for c in self.checks]
        ax.bar(names, [c.max_abs_diff for c in self.checks], label="max |difference|")
        ax.plot(names, [c.tolerance for c in self.checks], "k_", ms=30, label="tolerance")
        ax.set_yscale("log")
        ax.set_ylabel("logits")
        ax.set_title(f"{self.format} export against PyTorch")
        ax.legend(fontsize=8)


@dataclass
class Options:
    """Options of ``segbench export``.

    Args:
        format: onnx or torchscript (default: from the suffix of --out: .onnx, .pt or .ts)
        input_size: height and width of the export (default: the size of the first image of
            --split); with it, a run whose data cannot be read is checked on a synthetic image
        dynamic: free batch, height and width axes (any size), checked at the export size and
            at (H + 19, W + 45)
        rtol: the check's tolerance on |exported - PyTorch| logits, relative to the largest
            absolute PyTorch logit (plus 1e-5)
    """

    format: Format | None = None
    input_size: tuple[int, int] | None = None
    dynamic: bool = False
    rtol: float = 1e-3


@dataclass
class ExportOptions:
    """Which model ``segbench export`` writes, and where.

    Args:
        out: the file to write (FILE.onnx or FILE.pt), with FILE.json beside it
        ckpt: checkpoint of the run directory: best (default), last or a path to a .ckpt file
            (a missing one is an error, never a fallback)
        split: the split whose first image sets the default input size and is the check's input
        record: store the check's summary in the run's metrics.json (needs a run directory)
    """

    out: Path | None = None
    ckpt: str | None = None
    split: Split = "val"
    record: bool = False


def export_format(options: Options, out: Path) -> Format:
    if options.format is not None:
        return options.format
    if out.suffix in SUFFIXES:
        return SUFFIXES[out.suffix]
    raise ConfigError(
        f"--out {out}: cannot tell the format from the suffix {out.suffix!r}: give --format onnx "
        f"or --format torchscript (or name the file {out.stem}.onnx or {out.stem}.pt)"
    )


def synthetic_image(size: tuple[int, int], mean: Any, std: Any) -> Tensor:
    """A ``3 x H x W`` image for the check where the data cannot be read: seeded smooth noise
    (uniform RGB on an eighth of the size, upsampled bilinearly) normalised as the data is
    (``(rgb - mean) / std``), so the network sees values of a real image's range and the same
    export always gets the same check."""
    h, w = size
    gen = torch.Generator().manual_seed(0)
    coarse = torch.rand(1, 3, max(1, h // 8), max(1, w // 8), generator=gen)
    rgb = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0]
    mean_, std_ = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    return ((rgb - mean_) / std_).float().contiguous()


def check_image(
    model: LoadedModel, split: Split, size: tuple[int, int] | None
) -> tuple[Tensor, dict[str, Any]]:
    """The check's image and what it is (:attr:`Export.check_input`): the first image of
    ``split``, or, where the data cannot be read and ``size`` is given, :func:`synthetic_image`.
    Without ``size`` the export size is that image's: its data is needed, and the error says to
    give ``--input_size``."""
    dm = model.datamodule
    try:
        image = dm.unaugmented(split)[0]["image"].float()
    except (SegbenchError, OSError) as err:
        if size is None:
            kind = type(err) if isinstance(err, SegbenchError) else UnreadableFileError
            raise kind(
                f"segbench export: the export size is the first {split} image's, and the "
                f"{split} data of {model.name} cannot be read ({err}); give --input_size H W "
                "to export without the data (checked on a synthetic image)"
            ) from None
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        log.warning(
            "export: the %s data cannot be read (%s); checking on a synthetic %d x %d image",
            split,
            reason,
            *size,
        )
        synthetic = synthetic_image(size, dm.mean, dm.std)
        return synthetic, {"source": "synthetic", "split": split, "reason": reason}
    return image, {"source": "data", "split": split, "reason": None}


def check_inputs(image: Tensor, size: tuple[int, int], dynamic: bool) -> list[Tensor]:
    """The check's batches: ``image`` at ``size`` and, with ``dynamic``, it and its mirror image
    at ``(H + 19, W + 45)``."""
    h, w = size

    def at(s: tuple[int, int]) -> Tensor:
        x = image[None]
        if tuple(x.shape[-2:]) != s:
            x = F.interpolate(x, size=s, mode="bilinear", align_corners=False)
        return x.contiguous()

    batches = [at((h, w))]
    if dynamic:
        other = at((h + CHECK_OFFSET[0], w + CHECK_OFFSET[1]))
        batches.append(torch.cat([other, other.flip(-1)]).contiguous())
    return batches


def training_when_exported(model: LoadedModel) -> str | None:
    """Whether the run was still training when its checkpoint was exported, and by which
    process (``None``: it was not, or the model is not a run's): its best or last checkpoint
    is then not the run's final one, which the side-car and a warning say."""
    if model.run_dir is None or model.checkpoint is None:
        return None
    training = RunDir(model.run_dir).training_by()
    if training:
        log.warning(
            "export: %s is still training (%s): %s is of step %s, not the run's final model",
            model.run_dir,
            training,
            model.checkpoint.name,
            model.checkpoint_step,
        )
    return training


def metadata(model: LoadedModel, fmt: Format, size: tuple[int, int], dynamic: bool) -> dict:
    """The side-car's contents (without the check)."""
    dm = model.datamodule
    net_config = model.config.model.get("net") if "model" in model.config else None
    shape: list[int | str] = ["batch", 3, "height", "width"] if dynamic else [1, 3, *size]
    return {
        "format": fmt,
        "exporter": (
            f"torch.onnx.export (TorchScript-based, dynamo=False), opset {OPSET}"
            if fmt == "onnx"
            else "torch.jit.trace"
        ),
        "input": {
            "name": INPUT_NAME,
            "shape": shape,
            "dtype": "float32",
            "size": list(size),
            "dynamic": dynamic,
            "any_size": dynamic,
            "normalisation": "(rgb / 255 - mean) / std, RGB channel order",
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": [shape[0], dm.num_classes, shape[2], shape[3]],
            "meaning": "raw logits (argmax over axis 1 is the label map)",
        },
        "num_classes": dm.num_classes,
        "class_names": list(dm.class_names),
        "palette": [list(c) for c in dm.colours()],
        "ignore_index": dm.ignore_index,
        "mean": list(dm.mean),
        "std": list(dm.std),
        "architecture": type(model.net).__name__,
        "net": net_config.as_dict() if net_config is not None else None,
        "source": {
            "run_dir": str(model.run_dir) if model.run_dir is not None else None,
            "checkpoint": str(model.checkpoint) if model.checkpoint is not None else None,
            "checkpoint_step": model.checkpoint_step,
            "trained": model.trained,
            "run_training": training_when_exported(model),
        },
        "segbench_version": segbench.__version__,
        "torch_version": torch.__version__,
    }


def validate(options: Options, out: Path) -> None:
    """Reject option values that cannot work, before the model is loaded."""
    if export_format(options, out) == "onnx":
        require_onnx()
    if options.rtol <= 0:
        raise ConfigError(f"--rtol must be positive, got {options.rtol}")
    if options.input_size is not None and (
        len(options.input_size) != 2 or min(options.input_size) < 1
    ):
        raise ConfigError(
            f"--input_size must be two positive numbers, got {list(options.input_size)}"
        )


def export(model: LoadedModel, options: Options, out: Path, split: Split = "val") -> Export:
    """Write ``model``'s network to ``out`` and ``out.json`` once the written file computes its
    logits (:class:`ExportCheckError` otherwise, and nothing is written)."""
    validate(options, out)
    fmt = export_format(options, out)
    given = options.input_size
    if given is not None:
        given = (int(given[0]), int(given[1]))
    image, check_input = check_image(model, split, given)
    h, w = given or image.shape[-2:]
    size = (int(h), int(w))
    module = exportable(model.net)
    batches = check_inputs(image, size, options.dynamic)
    seconds: dict[str, float] = {}
    with torch.no_grad():  # before the export, which may leave the module in train mode
        references = [module(x) for x in batches]
    # The model and its side-car are one version (rundir.atomic_paths): both are written before
    # either is renamed into place, so a kill never leaves a side-car describing another model.
    with atomic_paths(out, Path(f"{out}.json")) as (tmp, tmp_json):
        t0 = time.perf_counter()
        write_model(module, tmp, fmt, batches[0], options.dynamic)
        seconds["export"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        run = load_exported(tmp, fmt)
        checks = [
            compare(r, run(x), options.rtol) for r, x in zip(references, batches, strict=True)
        ]
        seconds["check"] = time.perf_counter() - t0
        failed = [c for c in checks if not c.passed]
        if failed:
            raise ExportCheckError(
                f"segbench export: the {fmt} export of {model.name} does not compute its "
                "logits: "
                + "; ".join(
                    f"at {c.batch} x 3 x {c.size[0]} x {c.size[1]} max |difference| "
                    f"{c.max_abs_diff:.3g} (tolerance {c.tolerance:.3g}), labels agree at "
                    f"{100 * c.label_agreement:.2f} % of pixels"
                    for c in failed
                )
                + f". Nothing was written to {out}."
            )
        result = Export(
            str(out), fmt, tmp.stat().st_size, checks, seconds=seconds, check_input=check_input
        )
        result.metadata = metadata(model, fmt, size, options.dynamic)
        result.metadata["check"] = result.to_json()["checks"]
        result.metadata["check_input"] = check_input
        with tmp_json.open("wb") as f:
            json_writer(result.metadata)(f)
    log.info("export: wrote %s and %s.json", out, out)
    return result


def parser() -> CommandParser:
    parser = command_parser(
        "segbench export",
        __doc__ or "",
        usage="segbench export RUN_DIR --out FILE [options] "
        "(or: segbench export --config FILE.yaml [segbench fit overrides] --out FILE)",
    )
    parser.add_class_arguments(ExportOptions, nested_key=None, as_group=True)
    parser.add_class_arguments(Options, nested_key=None, as_group=True)
    return parser


def main(argv: list[str]) -> Export:
    """``segbench export``: parse, load the model, export and check, print, record."""
    runs, own_args, fit_args = split_argv(argv, option_keys(ExportOptions, Options))
    cmd = parser()
    ns = cmd.parse_args(own_args)
    where, options = options_of(ExportOptions, ns), options_of(Options, ns)
    if where.out is None:
        cmd.error("give the file to write: --out FILE.onnx (or FILE.pt)")
    if len(runs) > 1:
        cmd.error(f"segbench export takes one model at a time, got {len(runs)} run directories")
    if not runs and not fit_args:
        cmd.error("give a run directory or a config: --config FILE.yaml")
    if where.record and not runs:
        cmd.error("--record stores into a run directory: give one")
    out = Path(where.out)
    validate(options, out)
    model = load_model([*runs, *fit_args], ckpt=where.ckpt)
    result = export(model, options, out, where.split)
    if where.record and model.run_dir is not None:
        RunDir(model.run_dir).record(
            "export", result.summary(), checkpoint=model.checkpoint, step=model.checkpoint_step
        )
        log.info("export: recorded in %s", model.run_dir / "metrics.json")
    sys.stdout.write(result.markdown())
    return result
