"""The catalogue of bad inputs: each ends with its exit code, a message naming what to fix and
no traceback, and nothing of the trained run it touches is lost.

Exit code 2: config errors (jsonargparse's, with the file and line of a misspelt key); 1: every
other user error (``segbench.errors``). A disk-full case runs for real in test_reliability.py.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segbench.cli import main
from tests.helpers import REPO, tiny_args


@dataclass
class World:
    """A trained tiny run and a scratch folder for bad files."""

    root: Path
    run: Path
    scratch: Path

    def args(self, name: str = "new", extra: list[str] | None = None) -> list[str]:
        return tiny_args(self.root, name=name, extra=extra)

    def file(self, name: str, content: bytes | str) -> str:
        path = self.scratch / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("catalogue")
    scratch = root / "scratch"
    scratch.mkdir()
    main(["fit", *tiny_args(root, name="trained")])
    return World(root, root / "test" / "trained", scratch)


def snapshot(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def folder_data(w: World, problem: str) -> list[str]:
    """A FolderSegmentation tree of 4 images 32 x 32 with one ``problem``."""
    root = w.scratch / f"folder-{problem}"
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        side = 40 if problem == "sizes" and i == 1 else 32
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(
            root / "images" / f"{i}.png"
        )
        mask = rng.integers(0, 3, (side, side), dtype=np.uint8)
        if problem == "label" and i == 1:
            mask[0, 0] = 7
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")
    if problem == "corrupt":
        (root / "images" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    names = ["0", "1", "2", "3"] + (["9"] if problem == "missing" else [])
    for split in ("train", "val", "test"):
        (root / f"{split}.txt").write_text("\n".join(names) + "\n")
    return [
        "--data",
        "segbench.data.FolderSegmentation",
        "--data.init_args.root",
        str(root),
        "--data.init_args.num_classes",
        "3",
        "--data.init_args.image_suffix",
        ".png",
        "--data.init_args.batch_size",
        "2",
        "--data.init_args.num_workers",
        "0",
        "--model.class_weights",
        "null",
    ]


def camvid_with_rgb_masks(w: World) -> str:
    """A CamVid tree (SegNet layout) whose label maps were saved as RGB colours."""
    root = w.scratch / "camvid-rgb"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / f"{split}annot").mkdir(exist_ok=True)
        names = [f"0001TP_{i:06d}.png" for i in range(2)]
        for name in names:
            pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / split / name)
            Image.fromarray(pixels).save(root / f"{split}annot" / name)  # colours, not indices
        (root / f"{split}.txt").write_text(
            "".join(f"{split}/{n} {split}annot/{n}\n" for n in names)
        )
    return str(root)


def sweep(*extra: str | Callable[[World], str]) -> Args:
    """``segbench sweep`` of the quickstart's FCN variants, its runs in the scratch folder."""
    return lambda w: [
        "sweep", "--root", str(w.scratch / "sweeps"),
        *(e(w) if callable(e) else e for e in extra),
    ]  # fmt: skip


def truncated(w: World) -> str:
    data = (w.run / "checkpoints" / "last.ckpt").read_bytes()
    return w.file("truncated.ckpt", data[: len(data) // 2])


def plain_state_dict(w: World) -> str:
    path = w.scratch / "state_dict.pt"
    torch.save({"weight": torch.zeros(3)}, path)
    return str(path)


def other_architecture(w: World) -> str:
    path = w.scratch / "fcn32s-wide"
    if not (path / "checkpoints" / "last.ckpt").is_file():
        main(
            [
                "fit",
                *tiny_args(w.scratch, name="fcn32s-wide"),
                "--model.net.init_args.width",
                "0.125",
            ]
        )
    return str(w.scratch / "test" / "fcn32s-wide" / "checkpoints" / "last.ckpt")


def bad_yaml(w: World) -> str:
    return w.file("bad.yaml", "model:\n  aux_weight: [0.3\n")


def misspelt_yaml(w: World) -> str:
    return w.file("misspelt.yaml", "model:\n  aux_weight: 0.3\n  aux_wieght: 0.3\n")


Args = Callable[[World], list[str]]


def fit(*extra: str | Callable[[World], str]) -> Args:
    """``segbench fit`` of a new tiny run with ``extra`` arguments (callables make files)."""
    return lambda w: ["fit", *w.args(), *(e(w) if callable(e) else e for e in extra)]


def on_trained(command: str, *extra: str | Callable[[World], str]) -> Args:
    """A command on the trained run's config."""
    return lambda w: [
        command,
        "--config",
        str(w.run / "config.yaml"),
        *(e(w) if callable(e) else e for e in extra),
    ]


def eleven_classes(w: World) -> list[str]:
    """A folder data set of 11 classes named "0" ... "10" (the quickstart's are 11 others)."""
    return [*folder_data(w, "ok"), "--data.init_args.num_classes", "11"]


def data(problem: str) -> Args:
    return lambda w: ["fit", *w.args(), *folder_data(w, problem)]


CASES: list[tuple[str, Args, int, str]] = [
    # -- config: jsonargparse names the key (exit 2) ------------------------------------------
    ("unknown key", fit("--model.net.init_args.varient", "16s"), 2, "varient"),
    ("bad choice", fit("--model.net.init_args.variant", "4s"), 2, "variant"),
    (
        "misspelt choice",
        fit("--model.val_protocol.mode", "slid"),
        2,
        r"must be one of whole, slide \(did you mean slide\?\); got slid",
    ),
    (
        "misspelt choice or null",
        fit("--trainer.precision", "bf16-mix"),
        2,
        r"must be one of fast, .*bf16-mixed, .*, null \(did you mean bf16-mixed\?\); got bf16-mix",
    ),
    (
        "misspelt optimiser argument",
        fit("--model.optimizer.init_args.lrr", "0.1"),
        2,
        r"error: model.optimizer: torch.optim.SGD takes no argument lrr \(did you mean lr\?\); "
        r"it takes lr, momentum, .*weight_decay",
    ),
    (
        "misspelt network argument",
        fit("--model.net.init_args.widht", "0.5"),
        2,
        r"model.net: segbench.models.FCN takes no argument widht \(did you mean width\?\)",
    ),
    (
        "misspelt data argument",
        fit("--data.init_args.batch_sise", "2"),
        2,
        r"data: segbench.data.SyntheticSegmentation takes no argument batch_sise \(did you mean "
        r"batch_size\?\); it takes num_train",
    ),
    ("bad type", fit("--model.net.init_args.width", "wide"), 2, "width"),
    ("key prefix", fit("--trainer.max_epoch", "3"), 2, "max_epoch"),
    ("unknown data class", fit("--data", "segbench.data.Nope"), 2, "segbench.data.Nope"),
    (
        "misspelt key in a composed file",
        fit("--config", misspelt_yaml),
        2,
        r"aux_wieght.*\n.*misspelt\.yaml:3",
    ),
    # -- files given as config ------------------------------------------------------------------
    ("malformed YAML", fit("--config", bad_yaml), 1, r"bad\.yaml: not valid YAML at line 3"),
    ("missing config file", fit("--config", "/nonexistent.yaml"), 1, "nonexistent.yaml: no such"),
    (
        "empty config file",
        fit("--config", lambda w: w.file("empty.yaml", "")),
        1,
        r"empty\.yaml: empty, not a config",
    ),
    ("config folder", fit("--config", lambda w: str(w.scratch)), 1, "a folder, not a config file"),
    # -- values that cannot work (exit 1, the key named) ------------------------------------------
    ("batch size 0", fit("--data.init_args.batch_size", "0"), 1, "data.init_args.batch_size"),
    ("val batch 0", fit("--data.init_args.val_batch_size", "0"), 1, "val_batch_size must be"),
    ("workers -1", fit("--data.init_args.num_workers", "-1"), 1, "num_workers must be"),
    ("no images", fit("--data.init_args.num_train", "0"), 1, "num_train must be at least 1"),
    ("class weights", fit("--model.class_weights", "[1, 2]"), 1, "model.class_weights has 2"),
    ("net classes", fit("--model.net.init_args.num_classes", "5"), 1, "init_args.num_classes"),
    ("task classes", fit("--model.num_classes", "5"), 2, 'must be given via "data.num_classes"'),
    (
        "unquoted 0016E5",  # YAML reads it as 16e5
        fit("--data", "segbench.data.CamVid", "--data.init_args.val_sequences", "[0016E5]"),
        1,
        r"val_sequences: 1600000\.0 is a number",
    ),
    ("OHEM > 1", fit("--model.ohem_thresh", "1.5"), 1, r"model.ohem_thresh is a probability"),
    ("aux < 0", fit("--model.aux_weight", "-1"), 1, "model.aux_weight must be 0 or more"),
    ("width 0", fit("--model.net.init_args.width", "0"), 1, "init_args.width must be positive"),
    (
        "negative crop",
        fit("--data.init_args.augment.crop_size", "[-16, 32]"),
        1,
        r"augment.crop_size is \[height, width\] > 0, got \(-16, 32\)",
    ),
    ("negative rotation", fit("--data.init_args.augment.rotation", "-3"), 1, "rotation, blur"),
    ("bias lr < 0", fit("--model.bias_lr_factor", "-1"), 1, "model.bias_lr_factor must be 0"),
    ("lr < 0", fit("--model.optimizer.init_args.lr", "-1"), 1, "model.optimizer: Invalid"),
    ("no GPU", fit("--trainer.accelerator", "gpu"), 1, "(?i)gpu"),
    (
        "zero classes",
        lambda w: ["fit", *w.args(), *folder_data(w, "ok"), "--data.init_args.num_classes", "0"],
        1,
        "num_classes must be at least 1",
    ),
    # -- data ------------------------------------------------------------------------------------
    (
        "missing data root",
        fit("--data", "segbench.data.CamVid", "--data.init_args.root", "/nonexistent/camvid"),
        1,
        "/nonexistent/camvid",
    ),
    ("corrupt image", data("corrupt"), 1, r"cannot read image .*2\.png"),
    (
        "CamVid masks saved as colours",
        fit(
            "--data",
            "segbench.data.CamVid",
            "--data.init_args.root",
            camvid_with_rgb_masks,
            "--data.init_args.num_workers",
            "0",
            "--data.init_args.augment",
            "null",
            "--model.class_weights",
            "null",
        ),
        1,
        r"0001TP_000000\.png is an RGB mask, but masks here hold class indices: store them in a "
        r"single-channel or palette PNG \(CamVid's SegNet layout",
    ),
    ("listed file missing", data("missing"), 1, r"train\.txt:5: no such file .*9\.png"),
    ("label beyond classes", data("label"), 1, r"1\.png: label values \[7\] are outside"),
    (
        "mixed sizes in a batch",
        data("sizes"),
        1,
        r"different sizes .* data\.init_args\.batch_size 1",
    ),
    # -- checkpoints -------------------------------------------------------------------------------
    ("ckpt missing", fit("--ckpt_path", "/nonexistent.ckpt"), 1, "nonexistent.ckpt: no such"),
    (
        "ckpt is text",
        fit("--ckpt_path", lambda w: w.file("notes.ckpt", "hello\n")),
        1,
        r"notes\.ckpt: not a",
    ),
    (
        "ckpt empty",
        fit("--ckpt_path", lambda w: w.file("empty.ckpt", b"")),
        1,
        r"empty\.ckpt: empty file",
    ),
    (
        "ckpt truncated",
        fit("--ckpt_path", truncated),
        1,
        # torch's reason, its first sentence (the rest runs on for lines, and was cut mid-word)
        r"truncated\.ckpt: not a readable checkpoint: [^\n(]*\((?![^)]*seeing this)\w+: [^)]*\)\n",
    ),
    ("ckpt is a state dict", fit("--ckpt_path", plain_state_dict), 1, "not a Lightning checkpoint"),
    (
        "checkpoint of another width",
        lambda w: ["erf", str(w.run), "--ckpt", other_architecture(w), "--images", "1"],
        1,
        "does not fit the network of",
    ),
    ("no best checkpoint", fit("--ckpt_path", "best"), 1, r"no best checkpoint at .*new"),
    ("no last to resume", fit("--ckpt_path", "last"), 1, r"no last checkpoint at .*new"),
    (
        "init_from text",
        fit("--model.init_from", lambda w: w.file("init.pt", "text")),
        1,
        r"model.init_from: .*init\.pt: not a",
    ),
    (
        "init_from empty",
        fit("--model.init_from", lambda w: w.file("init0.pt", b"")),
        1,
        r"init0\.pt: empty",
    ),
    ("init_from missing", fit("--model.init_from", "/no.pt"), 1, "model.init_from: no checkpoint"),
    ("init_from fits nothing", fit("--model.init_from", plain_state_dict), 1, "fits FCN"),
    (
        "test with a bad checkpoint",
        on_trained("test", "--ckpt_path", truncated),
        1,
        r"truncated\.ckpt: not a readable",
    ),
    # -- what is evaluated: the run's weights, on their own classes --------------------------------
    ("validate without weights", on_trained("validate"), 1, r"--ckpt_path best or last"),
    (
        "test with model.init_from and no checkpoint",  # init_from initialises a fit only
        on_trained("test", "--model.init_from", lambda w: str(w.run / "checkpoints/last.ckpt")),
        1,
        r"segbench test without --ckpt_path: the network would be untrained",
    ),
    ("predict without weights", on_trained("predict"), 1, r"label maps would be written to"),
    (
        "checkpoint of other classes, as many",  # the quickstart's 11 against 11 others
        lambda w: [*on_trained("validate", "--ckpt_path", "best")(w), *eleven_classes(w)],
        1,
        r"best\.ckpt was trained on other classes than the data module \(FolderSegmentation\) "
        r"has: \[sky, grass, water, sand, road, \.\.\.\] \(11 classes\) in the checkpoint, "
        r"\[0, 1, 2, 3, 4, \.\.\.\] \(11 classes\) here",
    ),
    (
        "fit resuming another run's finished checkpoint",
        lambda w: [
            "fit",
            *w.args("foreign", ["--model.net.init_args.variant=16s"]),
            "--ckpt_path",
            str(w.run / "checkpoints/last.ckpt"),
        ],
        1,
        r"last\.ckpt: not a checkpoint of \S+/foreign \(the run this fit writes\).*"
        r"--config \S+/trained/config\.yaml --ckpt_path last.*--model\.init_from",
    ),
    # -- the run directory and the tools --------------------------------------------------------
    (
        "fresh fit over a run",
        lambda w: ["fit", *w.args(name="trained")],
        1,
        "holds checkpoints of an earlier run",
    ),
    (
        "report of a corrupt metrics file",
        lambda w: ["report", str(Path(w.file("m/metrics.json", "{")).parent)],
        1,
        "metrics.json: not valid JSON",
    ),
    ("report of nothing", lambda w: ["report", str(w.scratch / "none")], 1, "no metrics.json"),
    (
        "run.root is a file",
        fit("--run.root", lambda w: w.file("root-file", "x")),
        1,
        r"run.root: .*root-file is a file",
    ),
    ("run.name escapes the root", fit("--run.name", "../../x"), 1, "one directory name"),
    (
        "predict --out is a file",
        on_trained("predict", "--ckpt_path", "best", "--out", lambda w: w.file("out.txt", "x")),
        1,
        r"--out .*out\.txt: a file, not a folder",
    ),
    ("tool on a non-run", lambda w: ["erf", str(w.scratch)], 1, "not a run directory"),
    (
        "tool's misspelt choice",
        lambda w: ["erf", str(w.run), "--split", "valid"],
        2,
        r"split.*must be one of train, val, test \(did you mean val\?\); got valid",
    ),
    (
        "tool's misspelt option",
        lambda w: ["erf", str(w.run), "--imgaes", "2"],
        1,
        r"--imgaes: not an option of this command \(did you mean --images\?\)",
    ),
    (
        "summary of a run directory",
        lambda w: ["summary", str(w.run)],
        1,
        r"a run directory; this command takes its config: --config .*config\.yaml",
    ),
    ("erf --patch 0", lambda w: ["erf", str(w.run), "--patch", "0"], 1, "--patch must be at"),
    (
        "erf on a device the machine lacks",
        lambda w: ["erf", str(w.run), "--device", "cuda:99"],
        1,
        r"--device cuda:99: this machine has \d+ CUDA device",
    ),
    (
        "erf of a module the network lacks",
        lambda w: ["erf", str(w.run), "--layer", "backbone.fc8"],
        1,
        r"no module 'backbone.fc8' in FCN \(it has: out, backbone, .*backbone.fc7",
    ),
    (
        "upper-bound at stride 0",
        lambda w: ["upper-bound", str(w.run), "--strides", "[0, 8]"],
        1,
        r"--strides are output strides of 1 or more, got \[0, 8\]",
    ),
    ("sweep --jobs 0", sweep("--ablation", "fcn", "--jobs", "0"), 2, "--jobs: must be at least 1"),
    (
        "sweep of a missing variants file",
        sweep(
            "--group",
            "g",
            "--base",
            str(REPO / "experiments" / "quickstart.yaml"),
            "--variants",
            "/nonexistent/v.yaml",
            "--dry-run",
        ),
        2,
        "config not found: /nonexistent/v.yaml",
    ),
    (
        "tool on a run without the checkpoint",
        lambda w: ["erf", str(w.run), "--ckpt", "best-of-all"],
        1,
        "no best-of-all checkpoint",
    ),
    (
        "tool with a missing checkpoint",
        lambda w: ["gridding", str(w.run), "--ckpt", "nope"],
        1,
        "no nope checkpoint",
    ),
    (
        "tool given a run's config.yaml",
        lambda w: ["erf", str(w.run / "config.yaml")],
        1,
        r"config\.yaml: a run's config, not a run directory; give the run directory: .*trained$",
    ),
    (
        "tool given a run's checkpoint",
        lambda w: ["erf", str(w.run / "checkpoints" / "best.ckpt")],
        1,
        r"best\.ckpt: a run's file, not a run directory; give the run directory: "
        r".*trained --ckpt .*best\.ckpt",
    ),
    (
        "export --ckpt of a fresh network",
        lambda w: [
            "export",
            "--config",
            str(w.run / "config.yaml"),
            "--ckpt",
            "best",
            "--out",
            str(w.scratch / "fresh.onnx"),
        ],
        1,
        r"--ckpt best: a checkpoint of a run directory, but no run directory is given",
    ),
]


@pytest.mark.parametrize(
    ("args", "code", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
@pytest.mark.xdist_group("errors_world")  # its fixture: once
def test_bad_input(world, capsys, args, code, message):
    (world.scratch / "m").mkdir(exist_ok=True)
    argv = args(world)
    before = snapshot(world.run)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == code, err[-2000:]
    assert re.search(message, err), err[-2000:]
    assert "Traceback" not in err
    assert snapshot(world.run) == before  # nothing of the trained run was lost or changed
    # A fresh fit that failed before training leaves no directory (nor logger files) behind.
    assert not (world.root / "test" / "new").exists()


@pytest.mark.parametrize(
    ("args", "where"),
    [
        (["--model.optimizer.init_args.lrr", "0.1"], "--model.optimizer.init_args.lrr 0.1"),
        (["--trainer.max_epochs=abc"], "--trainer.max_epochs=abc"),
    ],
)
def test_a_bad_key_or_value_on_the_command_line_is_found_there_not_in_a_file(
    world, capsys, args, where
):
    """The config file sets the same section (or key) correctly: the error points at the
    argument, under a one-line usage instead of every key's."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *world.args(), *args])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert f"found in: the command line: {where}" in err, err
    assert ".yaml:" not in err, err
    assert err.splitlines()[0].startswith("usage: "), err
    assert len(err.splitlines()) < 20, err


@pytest.mark.parametrize("case", ["sweep --jobs 0", "sweep of a missing variants file"])
def test_a_bad_sweep_option_is_a_short_usage_and_one_line(world, capsys, case):
    args = next(c[1] for c in CASES if c[0] == case)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(args(world))
    assert len(capsys.readouterr().err.strip().splitlines()) <= 3


def test_a_cache_folder_that_is_a_file_is_one_paragraph(world, capsys, monkeypatch):
    monkeypatch.setenv("SEGBENCH_CACHE", world.file("cache-file", "x"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *world.args()])
    err = capsys.readouterr().err
    assert exit_.value.code == 1
    assert re.search(r"SEGBENCH_CACHE=.*cache-file: .* is a file, not a folder", err), err
    assert "Traceback" not in err


def test_a_home_this_user_cannot_write_is_one_paragraph_naming_the_cache(
    world, capsys, monkeypatch
):
    """Without SEGBENCH_CACHE the cache is ~/.cache/segbench; a home this user cannot write
    (HOME=/nonexistent, someone else's, read-only) failed where the first scenes were cached: a
    traceback, or as a user 'HOME: permission denied ... (run.root, --root, --out)', which named
    neither the cache nor SEGBENCH_CACHE. Here HOME lies under a file (so that root cannot write
    it either)."""
    home = Path(world.file("not-a-home", "x")) / "home"
    monkeypatch.delenv("SEGBENCH_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(home))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *world.args()])
    err = capsys.readouterr().err
    assert exit_.value.code == 1
    assert f"the cache folder (~/.cache/segbench): {home}/.cache/segbench cannot be made" in err
    assert "set SEGBENCH_CACHE to a folder this user can write" in err
    assert "Traceback" not in err


def test_the_catalogue_is_long_enough():
    assert len(CASES) >= 30


def test_segbench_debug_shows_the_traceback(world, monkeypatch):
    monkeypatch.setenv("SEGBENCH_DEBUG", "1")
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        main(["fit", *world.args(), "--data.init_args.batch_size", "0"])


def test_an_unexpected_error_keeps_its_traceback(world, monkeypatch):
    from segbench.task import SegmentationTask

    def broken(self, batch, batch_idx):
        return {}["no such key"]  # a bug, not a bad input

    monkeypatch.setattr(SegmentationTask, "training_step", broken)
    with pytest.raises(KeyError):
        main(["fit", *world.args(name="bug")])


def test_a_value_error_raised_inside_segbench_by_a_bug_keeps_its_traceback(world, monkeypatch):
    # A plain ValueError from segbench's own code is a bug (a layer wired to the wrong width),
    # not a bad input: only SegbenchError subclasses are shown without a traceback.
    import torch

    from segbench.models.layers.l2norm import L2Norm
    from segbench.task import SegmentationTask

    def miswired(self, batch, batch_idx):
        return L2Norm(4)(torch.zeros(1, 3, 2, 2)).sum()  # raises inside segbench/

    monkeypatch.setattr(SegmentationTask, "training_step", miswired)
    with pytest.raises(ValueError, match=r"L2Norm\(4\) got 3 channels"):
        main(["fit", *world.args(name="miswired")])


def test_errors_are_json_safe(world):
    # metrics.json of the trained run is strict JSON (no NaN) after all of the above.
    json.loads((world.run / "metrics.json").read_text(), parse_constant=pytest.fail)
