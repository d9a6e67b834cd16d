"""ONNX Runtime (CPU) against PyTorch eager inference for one ``segbench export`` model.

``python benchmarks/export_speed.py [--config experiments/quickstart.yaml] [--batch 16]
[--size 128 128] [--repeats 20]``: exports the config's freshly initialised network with
``segbench export --format onnx --dynamic`` and times, as images/s (median over ``--repeats``
batches after 3 untimed ones, ``torch.get_num_threads()`` threads for both):

* ONNX Runtime's ``CPUExecutionProvider`` on the exported file;
* PyTorch eager, float32 and contiguous: the network that was exported;
* PyTorch eager as the config runs it (its ``trainer.precision`` autocast and
  ``model.channels_last``).

Weights do not change the speed, so a fresh network stands for a trained one. Not part of the
tests; a busy machine distorts it.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from segbench.analysis.loading import load_model  # noqa: E402
from segbench.deploy.export import Options, export, exportable  # noqa: E402


def images_per_s(run: Callable[[], object], batch: int, repeats: int) -> float:
    for _ in range(3):
        run()
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - t0)
    return batch / statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "experiments" / "quickstart.yaml"))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, nargs=2, default=[128, 128])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    import onnxruntime as ort

    model = load_model(["--config", args.config])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model.onnx"
        options = Options(format="onnx", input_size=tuple(args.size), dynamic=True)
        sys.stdout.write(export(model, options, out).markdown())
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"])
        x = torch.randn(args.batch, 3, *args.size)
        feed = {"image": x.numpy()}
        rates = {"onnxruntime (CPU, fp32)": images_per_s(
            lambda: session.run(None, feed), args.batch, args.repeats)}  # fmt: skip
    fp32 = exportable(model.net)
    with torch.no_grad():
        rates["pytorch eager (fp32, contiguous)"] = images_per_s(
            lambda: fp32(x), args.batch, args.repeats
        )
    precision = str(model.config.trainer.get("precision") or "32-true")
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if precision.startswith("bf16")
        else contextlib.nullcontext()
    )
    task = model.task.eval()
    xc = x.contiguous(memory_format=task.memory_format)
    with torch.no_grad(), autocast:
        layout = "channels_last" if task.memory_format == torch.channels_last else "contiguous"
        setting = f"pytorch eager ({precision}, {layout})"
        rates[setting] = images_per_s(lambda: task.net(xc), args.batch, args.repeats)
    print(f"\n{type(model.net).__name__}, batch {args.batch}, {args.size[0]}x{args.size[1]}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"onnxruntime {ort.__version__}\n")  # fmt: skip
    print("| runtime | images/s |\n|---|---|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.1f} |")


if __name__ == "__main__":
    main()
