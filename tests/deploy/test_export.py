"""segbench export: every architecture to ONNX and TorchScript, checked against PyTorch.

The networks are the architectures' small test instances, fresh (``--config``) with every
parameter nudged by seeded noise: a fresh FCN's or ParseNet's zero-initialised classifier gives
all-zero logits, which any export would match. The check itself is tested by exports that are
wrong on purpose.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest
import torch
from torch import Tensor, nn

from segbench.cli import main as segbench
from segbench.data.synthetic import CLASS_NAMES, PALETTE
from segbench.deploy import export
from segbench.deploy.export import compare, run_model
from segbench.models import architectures
from tests.helpers import fresh_args, segbench_log

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}


@pytest.fixture
def nudged(monkeypatch):
    """The exported models with every parameter moved by seeded noise (0.05 standard deviation)."""
    load = export.load_model

    def load_nudged(*args, **kwargs):
        model = load(*args, **kwargs)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in model.net.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
        return model

    monkeypatch.setattr(export, "load_model", load_nudged)


def sidecar(path) -> dict:
    return json.loads(path.with_name(path.name + ".json").read_text())


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("arch", sorted(architectures()))
def test_every_architecture_exports_both_ways(arch, fmt, nudged, tmp_path, capsys):
    out = tmp_path / f"model{FORMATS[fmt]}"
    result = export.main([*fresh_args(tmp_path, arch), "--dynamic", "--out", str(out)])
    assert result.format == fmt  # from the suffix
    assert [c.size for c in result.checks] == [(64, 64), (83, 109)]  # no multiple of a stride
    assert [c.batch for c in result.checks] == [1, 2]
    for c in result.checks:
        assert c.passed
        assert c.label_agreement == 1.0
        assert c.tolerance > 10 * export.ATOL  # the logits are not all near 0
        assert c.max_abs_diff <= 1e-4 * (c.tolerance - export.ATOL) / 1e-3
    assert result.bytes == out.stat().st_size > 10_000
    text = capsys.readouterr().out
    assert f"{out} ({result.bytes / 2**20:.2f} MB)" in text
    assert "100.00 %" in text
    meta = sidecar(out)
    assert meta["class_names"] == list(CLASS_NAMES)
    assert meta["palette"] == [list(c) for c in PALETTE]
    assert meta["num_classes"] == len(CLASS_NAMES)
    assert meta["mean"] == pytest.approx([0.457, 0.585, 0.542])
    assert len(meta["std"]) == 3
    assert meta["architecture"] == arch
    assert meta["format"] == fmt
    assert meta["input"]["shape"] == ["batch", 3, "height", "width"]
    assert meta["input"]["dynamic"] is True
    assert meta["input"]["size"] == [64, 64]
    assert meta["source"] == {"run_dir": None, "checkpoint": None, "checkpoint_step": None,
                              "trained": False, "run_training": None}  # fmt: skip
    assert meta["segbench_version"]
    assert all(c["passed"] for c in meta["check"])
    # The file alone, at sizes it was not checked at: K logits per pixel, at the input size.
    for size in [(32, 160), (37, 150), (250, 250)]:
        logits = run_model(out, fmt, torch.randn(3, 3, *size))
        assert logits.shape == (3, meta["num_classes"], *size)
    assert torch.isfinite(logits).all()


def test_a_static_export_takes_its_size_only(nudged, tmp_path):
    out = tmp_path / "fcn.onnx"
    args = [*fresh_args(tmp_path, "FCN"), "--input_size", "64", "96", "--out", str(out)]
    result = export.main(args)
    assert [(c.batch, c.size) for c in result.checks] == [(1, (64, 96))]
    meta = sidecar(out)
    assert meta["input"]["shape"] == [1, 3, 64, 96]
    assert meta["input"]["dynamic"] is False
    assert meta["output"]["shape"] == [1, len(CLASS_NAMES), 64, 96]
    with pytest.raises(Exception, match=r"(?i)dimension|shape"):
        run_model(out, "onnx", torch.randn(2, 3, 64, 96))
    # The data is there: the check ran on its first validation image, resized.
    assert meta["check_input"] == {"source": "data", "split": "val", "reason": None}


def test_without_its_data_a_model_exports_at_a_given_size_checked_on_a_synthetic_image(
    nudged, tmp_path, capsys
):
    """The network needs no data to be exported; only the check needs an image. A model whose
    data folder is gone exports with --input_size, checked on a seeded synthetic image (said in
    the output and the side-car); without --input_size the error says to give one."""
    gone = tmp_path / "gone"
    args = [*fresh_args(tmp_path, "FCN"), "--data", "segbench.data.FolderSegmentation",
            "--data.init_args.root", str(gone), "--data.init_args.num_classes", "3",
            "--model.class_weights", "null", "--dynamic"]  # fmt: skip
    out = tmp_path / "fcn.onnx"
    with pytest.raises(SystemExit) as exit_:
        segbench(["export", *args, "--out", str(out)])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert f"data root {gone} is not a directory" in err
    assert "give --input_size H W" in err
    assert not out.exists()
    result = export.main([*args, "--input_size", "64", "48", "--out", str(out)])
    assert [(c.batch, c.size) for c in result.checks] == [(1, (64, 48)), (2, (83, 93))]
    assert all(c.passed and c.tolerance > 10 * export.ATOL for c in result.checks)
    reason = f"data root {gone} is not a directory"
    assert sidecar(out)["check_input"] == {"source": "synthetic", "split": "val", "reason": reason}
    assert (
        f"on a synthetic image (seeded smooth noise), as the val data cannot be read: {reason}"
        in (capsys.readouterr().out)
    )
    # The same export gets the same check: the synthetic image is seeded.
    again = export.main([*args, "--input_size", "64", "48", "--out", str(out)])
    assert [c.max_abs_diff for c in again.checks] == [c.max_abs_diff for c in result.checks]
    image = export.synthetic_image((64, 48), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert image.shape == (3, 64, 48)
    assert -2.0 <= float(image.min()) < float(image.max()) <= 2.0


class Wrong(nn.Module):
    """The network's logits times ``scale`` plus ``shift``."""

    def __init__(self, net: nn.Module, scale: float, shift: float = 0.0) -> None:
        super().__init__()
        self.net, self.scale, self.shift = net, scale, shift

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x) * self.scale + self.shift


@pytest.mark.parametrize(
    ("fmt", "scale", "labels_agree"),
    [("onnx", -1.0, False), ("torchscript", -1.0, False), ("onnx", 1.01, True)],
)
def test_a_wrong_export_fails_the_check_and_is_not_kept(
    fmt, scale, labels_agree, nudged, monkeypatch, tmp_path, capsys
):
    write = export.write_model
    monkeypatch.setattr(
        export, "write_model", lambda module, *a: write(Wrong(module, scale).eval(), *a)
    )
    out = tmp_path / f"model{FORMATS[fmt]}"
    with pytest.raises(SystemExit) as exit_:
        segbench(["export", *fresh_args(tmp_path, "FCN"), "--out", str(out)])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "does not compute its logits" in err
    assert "Traceback" not in err
    assert ("labels agree at 100.00 %" in err) == labels_agree
    assert f"Nothing was written to {out}" in err
    assert list(tmp_path.glob("model*")) == []


def test_an_export_that_dies_before_its_side_car_keeps_the_earlier_pair(
    nudged, monkeypatch, tmp_path
):
    """Found by SIGKILLing `segbench export` between its two files: the model was renamed into
    place before its side-car was written, so a kill there left a new model.pt beside the
    earlier export's model.pt.json (another input size, another checkpoint). Both are now
    written before either replaces its file: an export that fails at its side-car leaves the
    earlier pair as it was, and no temporary file."""
    out = tmp_path / "fcn.pt"
    args = [*fresh_args(tmp_path, "FCN"), "--out", str(out)]
    export.main([*args, "--input_size", "64", "64"])
    before = {p.name: p.read_bytes() for p in tmp_path.glob("*fcn.pt*")}
    assert sorted(before) == ["fcn.pt", "fcn.pt.json"]

    def dies(*a, **k):
        raise OSError("killed while writing the side-car")

    monkeypatch.setattr(export, "metadata", dies)
    with pytest.raises(OSError, match="side-car"):
        export.main([*args, "--input_size", "96", "128"])
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*fcn.pt*")} == before


def test_the_check_allows_near_ties_only():
    ref = torch.tensor([[1.0, 1.0 + 1e-6], [0.0, 2.0]]).T.reshape(1, 2, 1, 2)  # pixel 0: a tie
    flipped_tie = ref.clone()
    flipped_tie[0, :, 0, 0] = torch.tensor([1.0 + 1e-6, 1.0])
    ok = compare(ref, flipped_tie, rtol=1e-3)
    assert ok.passed
    assert ok.label_agreement == 0.5
    assert ok.near_ties == 1
    assert ok.tolerance == pytest.approx(2e-3 + export.ATOL)
    swapped = ref.flip(1)
    bad = compare(ref, swapped, rtol=1e-3)
    assert not bad.passed
    assert bad.disagreements == 1


def test_without_the_export_extra_onnx_names_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(SystemExit) as exit_:
        segbench(["export", *fresh_args(tmp_path, "FCN"), "--out", str(tmp_path / "m.onnx")])
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip()
    assert "pip install 'segbench[export]'" in err
    assert "onnxruntime" in err
    assert len(err.splitlines()) == 1, err


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--out", "model.bin"], "--format onnx"),
        (["--out", "m.pt", "--dynamic", "--input_size", "0", "64"], "two positive numbers"),
    ],
)
def test_bad_values_are_named(args, named, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        segbench(["export", *fresh_args(tmp_path, "FCN"), *args])
    assert exit_.value.code == 1
    assert named in capsys.readouterr().err


@pytest.mark.slow  # trains a tiny FCN for an epoch (shared with test_tools.py's runs)
def test_a_run_directory_exports_its_checkpoint_and_records_the_check(trained_run, tmp_path):
    run = trained_run("FCN")
    out = tmp_path / "fcn.pt"
    result = export.main([str(run), "--ckpt", "last", "--record", "--out", str(out)])
    assert result.checks[0].passed
    meta = sidecar(out)
    assert meta["source"]["run_dir"] == str(run)
    assert meta["source"]["trained"] is True
    assert meta["source"]["checkpoint"].endswith("last.ckpt")
    assert meta["source"]["checkpoint_step"] == 4
    assert meta["source"]["run_training"] is None
    record = json.loads((run / "metrics.json").read_text())["records"]["export"]
    assert record["values"] == pytest.approx(result.summary())
    assert record["values"]["export/torchscript/label_agreement"] == 1.0


@pytest.mark.xdist_group("trained_run")  # its runs: once
def test_an_export_of_a_run_still_training_says_so(trained_run, tmp_path):
    """An export of a run that a ``fit`` is training (its claim held: here by this process) says
    in its side-car and a warning that the checkpoint is not the run's final model, with its
    step; the side-car named only the checkpoint file, which then reads as the finished run's."""
    from segbench.rundir import RunDir

    run = tmp_path / "run"
    shutil.copytree(trained_run("FCN"), run)
    out = tmp_path / "fcn.pt"
    claim = RunDir(run).writer()
    try:
        with segbench_log() as lines:
            export.main([str(run), "--out", str(out)])
    finally:
        claim.release()
    source = sidecar(out)["source"]
    assert source["run_training"].startswith(f"pid {os.getpid()} on ")
    assert isinstance(source["checkpoint_step"], int)
    said = "\n".join(lines)
    assert f"{run} is still training (pid {os.getpid()}" in said
    assert f"best.ckpt is of step {source['checkpoint_step']}, not the run's final" in said
