"""``trainer.precision: fast``: bf16-mixed where the device computes bf16 natively, else 32-true."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import segbench
from segbench import numerics
from segbench.cli import main
from segbench.numerics import SegbenchTrainer, device_of, native_bf16, resolve_precision
from tests.helpers import REPO, tiny_args


def cpu_flags() -> set[str]:
    text = Path("/proc/cpuinfo").read_text()
    line = next(x for x in text.splitlines() if x.startswith("flags"))
    return set(line.split(":", 1)[1].split())


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="needs Linux's /proc/cpuinfo")
def test_native_bf16_on_the_cpu_follows_its_instruction_set():
    flags = cpu_flags()
    assert native_bf16("cpu") == bool({"avx512_bf16", "amx_bf16", "amx_tile"} & flags)


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16-mixed"), (False, "32-true")])
def test_fast_resolves_by_the_device(monkeypatch, native, expected):
    seen = []
    monkeypatch.setattr(numerics, "native_bf16", lambda d: seen.append(d) or native)
    assert resolve_precision("fast", "cpu") == expected
    assert resolve_precision("fast", "gpu") == expected
    assert seen == ["cpu", "cuda"]
    for other in ("32-true", "bf16-mixed", "16-mixed", 32, None):
        assert resolve_precision(other, "cpu") == other  # an explicit choice is kept


def test_device_of_accelerator_values(monkeypatch):
    monkeypatch.setattr(numerics.torch.cuda, "is_available", lambda: False)
    assert [device_of(a) for a in ("cpu", "gpu", "cuda", "auto", None)] == [
        "cpu", "cuda", "cuda", "cpu", "cpu"
    ]  # fmt: skip
    monkeypatch.setattr(numerics.torch.cuda, "is_available", lambda: True)
    assert device_of("auto") == "cuda"


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16-mixed"), (False, "32-true")])
def test_the_trainer_accepts_fast(monkeypatch, native, expected):
    monkeypatch.setattr(numerics, "native_bf16", lambda d: native)
    trainer = SegbenchTrainer(precision="fast", accelerator="cpu", logger=False,
                              enable_checkpointing=False, enable_progress_bar=False)  # fmt: skip
    assert trainer.precision == expected


def test_a_fit_records_the_precision_that_fast_chose(tiny):
    run = tiny.root / "test" / "tiny"
    main(["fit", *tiny(), "--trainer.precision", "fast"])
    provenance = json.loads((run / "metrics.json").read_text())["provenance"]
    assert provenance["precision"] == resolve_precision("fast", "cpu")


def test_an_unknown_precision_is_still_refused(tiny, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *tiny(), "--trainer.precision", "fastest"])
    assert exit_.value.code == 2
    assert "trainer.precision" in capsys.readouterr().err


@pytest.mark.parametrize(
    "backend",
    [
        "aot_eager",
        # Inductor's kernels: ~95 s of C++ compilation on two cores with an empty cache, for
        # what torch tests; segbench's part (in place, keys, resume, load) is the same above.
        pytest.param("inductor", marks=pytest.mark.slow),
    ],
)
def test_a_compiled_run_keeps_eager_checkpoints_and_resumes_after_a_kill(tmp_path, backend):
    """``model.compile``: the network is compiled in place, so the checkpoints hold the eager
    network's keys (no ``_orig_mod.``), a killed run resumes, and ``segbench.load`` and the
    export path read it as any run."""
    # Killed at step 3 of 4, before any validation: the killed process compiles the training
    # graph only (Inductor takes seconds a graph), the resumed one the training and eval graphs.
    extra = ["--model.compile", "true", "--model.compile_backend", backend]
    extra += ["--run.checkpoint_every_n_steps", "1"]
    args = tiny_args(tmp_path, name="compiled", epochs=1, extra=extra)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    kill = ["--trainer.callbacks+=tests.faults.kill.KillAtStep", "--trainer.callbacks.step=3"]
    fit = [sys.executable, "-m", "segbench.cli", "fit", *args]
    assert subprocess.run([*fit, *kill], cwd=REPO, env=env).returncode == -9
    resumed = subprocess.run(
        [*fit, "--ckpt_path", "last"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    said = "the network is compiled (" + ("mode default" if backend == "inductor" else "backend")
    assert said in resumed.stderr, resumed.stderr[-3000:]
    run = tmp_path / "test" / "compiled"
    for name in ("best", "last"):
        state = torch.load(run / "checkpoints" / f"{name}.ckpt", weights_only=True)["state_dict"]
        assert state, name
        assert not [k for k in state if "_orig_mod" in k], name
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["config"]["model.compile"] is True
    assert metrics["config"]["model.compile_backend"] == backend
    assert len(metrics["provenance"]["attempts"]) == 2  # killed, then resumed
    model = segbench.load(run)  # built without a trainer: eager, the same weights
    assert getattr(model.task.net, "_compiled_call_impl", None) is None
    assert model.predict(torch.rand(3, 64, 64)).labels.shape == (64, 64)
