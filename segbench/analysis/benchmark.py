"""``segbench benchmark --config FILE.yaml [overrides]``: throughput of the loader and the model.

Measures, for the configured data module and network:

* ``loader``: images/s of the training loader alone (decoding or rendering, augmentation,
  collation, with the configured ``num_workers``), nothing else running;
* ``forward``: images/s of inference (eval mode, no autograd) on batches of the configured size;
* ``train``: images/s of a training step (forward, loss, backward, optimiser step).

Model timings use random inputs of ``--input_size`` (default: the size of the first training
batch) so they measure the network, not the loader. Each measurement runs ``--warmup`` untimed
iterations first, then ``--iters`` timed ones. On a GPU, CUDA is synchronised around the timing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from segbench.config import build


@dataclass
class Throughput:
    what: str
    images_per_s: float
    batch_size: int
    input_size: tuple[int, int]
    device: str
    threads: int


def _timed(step: Callable[[], None], iters: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def loader_throughput(datamodule, batches: int, warmup: int = 2) -> tuple[float, dict]:
    """Images/s of iterating the training loader; also returns the first batch."""
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    it = iter(loader)
    first = next(it)
    for _ in range(warmup - 1):
        next(it)
    n, t0 = 0, time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        n += batch["image"].shape[0]
    return n / (time.perf_counter() - t0), first


def model_throughput(
    task,
    *,
    batch_size: int,
    input_size: tuple[int, int],
    iters: int,
    warmup: int,
    device: torch.device,
    train: bool,
) -> float:
    """Images/s of inference (``train=False``) or of a full training step."""
    net = task.net.to(device)
    task.to(device)
    x = torch.randn(batch_size, 3, *input_size, device=device)
    y = torch.randint(0, task.num_classes, (batch_size, *input_size), device=device)
    if train:
        net.train()
        opt = torch.optim.SGD(
            [p for p in net.parameters() if p.requires_grad], lr=1e-6, momentum=0.9
        )

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            loss = task.compute_loss(net(x), {"image": x, "mask": y})["loss"]
            loss.backward()
            opt.step()
    else:
        net.eval()

        def step() -> None:
            with torch.inference_mode():
                net(x)

    seconds = _timed(step, iters, warmup, device)
    return batch_size * iters / seconds


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="segbench benchmark",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--what",
        nargs="+",
        default=["loader", "forward", "train"],
        choices=["loader", "forward", "train"],
    )
    parser.add_argument(
        "--input_size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="model input size (default: the first training batch's)",
    )
    parser.add_argument("--batch_size", type=int, help="default: the data module's")
    parser.add_argument("--iters", type=int, default=10, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    parser.add_argument("--loader_batches", type=int, default=30)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    known, rest = parser.parse_known_args(argv)
    if not rest:
        parser.error("give a config: --config FILE.yaml")

    task, dm, _ = build(rest)
    device = torch.device(known.device)
    batch_size = known.batch_size or dm.batch_size
    input_size = tuple(known.input_size) if known.input_size else None
    results: list[Throughput] = []
    if "loader" in known.what or input_size is None:
        ips, first = loader_throughput(dm, known.loader_batches)
        input_size = input_size or tuple(first["image"].shape[-2:])
        if "loader" in known.what:
            results.append(
                Throughput(
                    "loader",
                    ips,
                    dm.batch_size,
                    tuple(first["image"].shape[-2:]),
                    "cpu",
                    dm.num_workers,
                )
            )
    for what in ("forward", "train"):
        if what in known.what:
            ips = model_throughput(
                task,
                batch_size=batch_size,
                input_size=input_size,
                iters=known.iters,
                warmup=known.warmup,
                device=device,
                train=what == "train",
            )
            results.append(
                Throughput(what, ips, batch_size, input_size, device.type, torch.get_num_threads())
            )
    if known.json:
        sys.stdout.write(json.dumps([asdict(r) for r in results], indent=2) + "\n")
        return
    lines = [
        "| measure | images/s | batch | input | device | threads/workers |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.what} | {r.images_per_s:.1f} | {r.batch_size} | "
        f"{r.input_size[0]}x{r.input_size[1]} | {r.device} | {r.threads} |"
        for r in results
    ]
    sys.stdout.write("\n".join(lines) + "\n")
