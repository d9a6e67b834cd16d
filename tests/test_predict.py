"""`segbench predict --images`: any image files, at their own size, with overlays and
probabilities; bad inputs named."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from segbench.callbacks import PredictionWriter
from segbench.cli import main
from segbench.cli.lightning import build
from segbench.data.files import batches_by_size, find_images, output_names
from segbench.errors import DataError
from tests.helpers import run_main


def test_find_images_reads_files_folders_and_globs_and_names_what_is_missing(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "sub").mkdir()
    for name in ("a/x.png", "a/sub/y.JPG", "a/notes.txt", "z.jpeg"):
        (tmp_path / name).write_bytes(b"")
    found = find_images([str(tmp_path / "a"), str(tmp_path / "*.jpeg"), str(tmp_path / "z.jpeg")])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a/sub/y.JPG",
        "a/x.png",
        "z.jpeg",
    ]
    (tmp_path / "empty").mkdir()
    for bad, says in [
        (tmp_path / "nope.png", "no such file or folder"),
        (tmp_path / "*.bmp", "no image file matches"),
        (tmp_path / "empty", "holds no image file"),
    ]:
        with pytest.raises(FileNotFoundError, match=says) as err:
            find_images([str(bad)])
        assert str(bad) in str(err.value)


def test_output_names_are_distinct():
    from pathlib import Path

    paths = [Path("/d/a/x.png"), Path("/d/b/x.png"), Path("/d/b/y.png"), Path("/d/b/y.jpg")]
    assert output_names(paths) == ["a_x", "b_x", "b_y_png", "b_y_jpg"]  # each says which
    assert output_names(paths[2:3]) == ["y"]
    # Distinct as files too: x_overlay's label map would be x's overlay (x_overlay.png).
    clash = [Path("/d/x.png"), Path("/d/x_overlay.png"), Path("/d/x_overlay_overlay.jpg")]
    assert output_names(clash) == ["x", "x_overlay_png", "x_overlay_overlay_jpg"]
    assert output_names(clash[1:]) == ["x_overlay", "x_overlay_overlay_jpg"]
    # Names made to meet the renamed one are numbered rather than overwritten.
    made = [*clash[:2], Path("/d/x_overlay_png.jpg")]
    names = output_names(made)
    files = [n + suffix for n in names for suffix in (".png", "_overlay.png", "_probs.npy")]
    assert len(set(files)) == len(files) == 9


def test_batches_hold_one_size_each():
    sizes = [(4, 4), (4, 5), (4, 4), (4, 4), (4, 5)]
    assert batches_by_size(sizes, 2) == [[0, 2], [3], [1, 4]]


def test_predict_on_image_files_equals_predict_on_the_test_split(tiny):
    """The test split's images written as PNG files and predicted with --images give the same
    label maps as predicting the split itself; mixed sizes come back at their own size, an
    unreadable file is reported and skipped."""
    run_main(["fit", *tiny()])
    run_dir = tiny.root / "test" / "tiny"
    config = str(run_dir / "config.yaml")
    run_main(["predict", "--config", config, "--ckpt_path", "best", "--save_probs", "true"])
    split = {p.stem[: -len("_probs")]: np.load(p) for p in (run_dir / "predictions").glob("*.npy")}
    assert len(split) == 6

    _, dm, _ = build(tiny())
    dm.setup("test")
    images = tiny.root / "images"
    images.mkdir()
    mean, std = torch.tensor(dm.mean).view(3, 1, 1), torch.tensor(dm.std).view(3, 1, 1)
    for sample in dm.datasets["test"]:
        rgb = ((sample["image"] * std + mean) * 255).round().clamp(0, 255).byte()
        Image.fromarray(rgb.permute(1, 2, 0).numpy()).save(images / f"{sample['name']}.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (37, 91, 3), dtype=np.uint8)).save(images / "odd.jpg")
    (images / "broken.png").write_bytes(b"not an image")
    out = tiny.root / "out"
    run_main(["predict", "--config", config, "--ckpt_path", "best", "--images", str(images),
              "--out", str(out), "--save_probs", "true"])  # fmt: skip

    for name, probs in split.items():  # the same probabilities (float16), so the same labels
        np.testing.assert_allclose(np.load(out / f"{name}_probs.npy"), probs, atol=2e-3)
        labels = np.asarray(Image.open(run_dir / "predictions" / f"{name}.png"))
        assert np.array_equal(np.asarray(Image.open(out / f"{name}.png")), labels), name
    odd = Image.open(out / "odd.png")
    assert odd.mode == "P"
    assert odd.size == (91, 37)  # the image's own size
    probs = np.load(out / "odd_probs.npy")
    assert probs.dtype == np.float16
    assert probs.shape == (11, 37, 91)
    np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1.0, atol=2e-2)
    assert (probs.argmax(0) == np.asarray(odd)).mean() > 0.99  # float16 ties aside
    overlay = Image.open(out / "odd_overlay.png")
    assert overlay.height == 37
    assert overlay.width > 91  # the image, then its legend
    assert not (out / "broken.png").exists()


def test_predict_names_a_folder_without_images(tiny, capsys):
    run_main(["fit", *tiny()])
    empty = tiny.root / "empty"
    empty.mkdir()
    config = str(tiny.root / "test" / "tiny" / "config.yaml")
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "--config", config, "--ckpt_path", "best", "--images", str(empty)])
    assert exit_.value.code == 1
    assert f"--images {empty}: the folder holds no image file" in capsys.readouterr().err


def test_a_missing_image_path_fails_before_any_logger_is_made(tiny, monkeypatch, capsys):
    """A misspelt --images started the run's loggers first: W&B opened an offline run in the
    run's wandb/ folder and printed its banner around the error."""
    import segbench.cli.lightning as lightning

    run_main(["fit", *tiny()])
    made: list[object] = []
    monkeypatch.setattr(lightning, "make_loggers", lambda *a, **k: made.append(a) or [])
    config = str(tiny.root / "test" / "tiny" / "config.yaml")
    missing = tiny.root / "nope"
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "--config", config, "--ckpt_path", "best", "--images", str(missing)])
    assert exit_.value.code == 1
    assert f"--images {missing}: no such file or folder" in capsys.readouterr().err
    assert not made, "a logger was made before the missing image was named"


def test_no_output_file_is_written_twice(tiny):
    """x.png and x_overlay.png in one folder: the label map of the second used to overwrite the
    overlay of the first (both x_overlay.png). The second's files take its extension."""
    run_main(["fit", *tiny()])
    config = str(tiny.root / "test" / "tiny" / "config.yaml")
    images = tiny.root / "images"
    images.mkdir()
    Image.new("RGB", (64, 48), (90, 160, 60)).save(images / "x.png")
    Image.new("RGB", (40, 32), (200, 30, 30)).save(images / "x_overlay.png")
    out = tiny.root / "out"
    run_main(["predict", "--config", config, "--ckpt_path", "best", "--images", str(images),
              "--out", str(out), "--save_probs", "true"])  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == [
        "x.png",
        "x_overlay.png",
        "x_overlay_png.png",
        "x_overlay_png_overlay.png",
        "x_overlay_png_probs.npy",
        "x_probs.npy",
    ]
    overlay = Image.open(out / "x_overlay.png")  # x's overlay: its image, then the legend
    assert overlay.mode == "RGB"
    assert overlay.height == 48
    assert overlay.width > 64
    labels = Image.open(out / "x_overlay_png.png")  # x_overlay's label map, at its size
    assert labels.mode == "P"
    assert labels.size == (40, 32)
    # The writer's own guard: a file already written in this prediction is refused, named.
    writer = PredictionWriter(out)
    writer._path("a", ".png")
    with pytest.raises(DataError, match=r"a\.png would be written twice: two images are named"):
        writer._path("a", ".png")


def test_images_too_large_are_skipped_up_front_and_the_others_predicted(tiny, monkeypatch, capsys):
    """Over --max_megapixels: each is reported with its size and what to do, before anything is
    predicted, and costs the others nothing. segbench's limit is the one that counts: Pillow's
    decompression-bomb limit neither refuses an image under it nor one that --tile predicts."""
    run_main(["fit", *tiny()])
    config = str(tiny.root / "test" / "tiny" / "config.yaml")
    images = tiny.root / "images"
    images.mkdir()
    for name, side in (("small", 64), ("large", 90), ("bomb", 200)):
        Image.new("RGB", (side, side), (90, 160, 60)).save(images / f"{name}.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # "bomb" (40,000 px) is over twice it
    out = tiny.root / "out"
    capsys.readouterr()
    common = ["predict", "--config", config, "--ckpt_path", "best", "--images", str(images)]
    run_main([*common, "--out", str(out), "--max_megapixels", "0.006"])
    err = capsys.readouterr().err
    assert (out / "small.png").is_file()
    assert not (out / "large.png").exists()
    assert not (out / "bomb.png").exists()
    assert "large.png: 90 x 90 = 0.0081 MP is over --max_megapixels 0.006" in err
    assert "predicting it whole would hold ~0.0013 GB" in err  # two digits, not "~0 GB"
    assert "bomb.png: 200 x 200 = 0.04 MP is over --max_megapixels 0.006" in err
    assert "tiles (--tile 1024: ~40 bytes a pixel)" in err
    run_main(
        [*common, "--out", str(tiny.root / "all"), "--max_megapixels", "0.006", "--tile", "64"]
    )
    assert {p.name for p in (tiny.root / "all").glob("*.png") if "overlay" not in p.name} == {
        "small.png",
        "large.png",
        "bomb.png",
    }
    assert Image.MAX_IMAGE_PIXELS == 5000  # lifted only while segbench reads what it sized


def test_large_images_are_predicted_in_tiles_with_bounded_memory(tiny, capsys):
    """--tile: an image over --max_megapixels is predicted tile by tile instead of skipped. One
    tile that covers the image is the whole-image prediction; smaller tiles see their context
    through a margin, and say how far they are."""
    run_main(["fit", *tiny()])
    config = str(tiny.root / "test" / "tiny" / "config.yaml")
    rng = np.random.default_rng(0)
    picture = np.kron(rng.integers(0, 255, (12, 15, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    Image.fromarray(picture).save(tiny.root / "large.png")  # 120 x 96 = 0.0115 MP
    common = ["predict", "--config", config, "--ckpt_path", "best", "--save_probs", "true",
              "--overlays", "false", "--images", str(tiny.root / "large.png")]  # fmt: skip

    def predict(name: str, *args: str) -> tuple[np.ndarray, np.ndarray]:
        run_main([*common, "--out", str(tiny.root / name), *args])
        labels = np.asarray(Image.open(tiny.root / name / "large.png"))
        return labels, np.load(tiny.root / name / "large_probs.npy")

    whole, whole_probs = predict("whole")
    capsys.readouterr()
    one, one_probs = predict("one", "--max_megapixels", "0.006", "--tile", "128")
    assert "predicted in tiles of 128" in capsys.readouterr().err
    assert np.array_equal(one, whole)
    assert np.array_equal(one_probs, whole_probs)
    tiled, tiled_probs = predict("tiled", "--max_megapixels", "0.006", "--tile", "32")
    assert "tiles: 12 of 12 (100%)" in capsys.readouterr().err  # 3 x 4 tiles
    assert tiled.shape == whole.shape == (96, 120)
    assert tiled_probs.shape == whole_probs.shape
    assert np.allclose(tiled_probs.astype(np.float32).sum(0), 1.0, atol=1e-2)
    assert (tiled == whole).mean() > 0.9, (tiled == whole).mean()


def test_a_prediction_that_dies_mid_write_leaves_whole_files(tiny, monkeypatch):
    """Found by killing `segbench predict` part-way: it wrote each PNG straight under its real
    name, so a kill mid-write left a truncated (0-byte) overlay that no reader opens. A write
    that fails half-way (here: an overlay's save writes half its bytes, then raises) now leaves
    the earlier prediction's file whole and no temporary file behind."""
    import io

    from segbench.callbacks import predictions as writer_module

    run_main(["fit", *tiny()])
    config = str(tiny.root / "test" / "tiny" / "config.yaml")
    args = ["predict", "--config", config, "--ckpt_path", "best"]
    run_main(args)
    out = tiny.root / "test" / "tiny" / "predictions"
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    class HalfWritten:
        def __init__(self, picture: Image.Image) -> None:
            self.picture = picture

        def save(self, fp, format=None):
            whole = io.BytesIO()
            self.picture.save(whole, format="PNG")
            data = whole.getvalue()[: len(whole.getvalue()) // 2]
            if isinstance(fp, str | bytes) or hasattr(fp, "__fspath__"):
                with open(fp, "wb") as f:
                    f.write(data)
            else:
                fp.write(data)
            raise OSError("the write died half-way")

    real = writer_module.overlay
    monkeypatch.setattr(writer_module, "overlay", lambda *a, **k: HalfWritten(real(*a, **k)))
    with pytest.raises((OSError, SystemExit)):
        main(args)
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after.keys() == before.keys()  # no temporary file left
    for png in out.glob("*.png"):
        Image.open(png).load()  # each one whole
    assert after == before  # the failed overlay (and everything after it) is the earlier one


def test_an_images_files_are_one_prediction(tiny):
    """A label map, its overlay and its probabilities are one version: predicting again into
    the same folder without overlays or probabilities left the earlier prediction's beside the
    new label maps, describing another model's (or checkpoint's) output. They are removed with
    the new label map; files of other names are left alone."""
    run_main(["fit", *tiny()])
    config = str(tiny.root / "test" / "tiny" / "config.yaml")
    out = tiny.root / "test" / "tiny" / "predictions"
    run_main(["predict", "--config", config, "--ckpt_path", "best", "--save_probs", "true"])
    first = sorted(p.name for p in out.iterdir())
    assert {n.rsplit("_", 1)[-1] for n in first if "_" in n} >= {"overlay.png", "probs.npy"}
    (out / "notes.txt").write_text("mine")
    run_main(["predict", "--config", config, "--ckpt_path", "last", "--overlays", "false"])
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [n for n in first if not n.endswith(("_overlay.png", "_probs.npy"))] + ["notes.txt"]
    )


def test_predict_with_out_elsewhere_leaves_the_run_alone(tiny):
    """predict logs nothing, yet it started the run's loggers: they rewrote its hparams.yaml (and
    opened a W&B run in it), so predicting with someone else's run, or a read-only copy, failed
    with 'permission denied' even with --out in a folder of one's own (found as a non-root
    user). The run's folders are made read-only here: as a user that binds; as root, which
    writes anyway, the run's files are checked unchanged."""
    import stat

    run_main(["fit", *tiny()])
    run = tiny.root / "test" / "tiny"
    images = tiny.root / "images"
    images.mkdir()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(images / "a.png")

    def files() -> dict[str, int]:
        return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in run.rglob("*")}

    before = files()
    folders = [run.parent, *[p for p in run.rglob("*") if p.is_dir()], run]
    modes = {p: p.stat().st_mode for p in folders}
    for folder in folders:
        folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    try:
        out = tiny.root / "out"
        run_main(["predict", "--config", str(run / "config.yaml"), "--ckpt_path", "best",
                  "--images", str(images), "--out", str(out)])  # fmt: skip
        assert (out / "a.png").is_file()
        assert files() == before
    finally:
        for folder, mode in modes.items():
            folder.chmod(mode)
