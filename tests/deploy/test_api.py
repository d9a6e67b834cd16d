"""The Python API (``segbench.load``): the labels equal ``segbench predict --images``'s on the same
files; paths, PIL images, arrays and tensors give the same labels; bad inputs are named; the
docs page's example runs as written."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import segbench
from segbench.cli.lightning import build
from segbench.errors import DataError
from tests.helpers import REPO, run_main, tiny_args

# One worker builds its run (a module or session fixture) for all these tests (make test).
pytestmark = pytest.mark.xdist_group("api")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny quickstart run of one epoch and four PNG scenes of its test split (two sizes)."""
    root = tmp_path_factory.mktemp("api")
    args = tiny_args(root, name="api")
    run_main(["fit", *args])
    _, dm, _ = build(args)
    dm.setup("test")
    images = root / "images"
    images.mkdir()
    mean, std = torch.tensor(dm.mean).view(3, 1, 1), torch.tensor(dm.std).view(3, 1, 1)
    for i in range(3):
        sample = dm.datasets["test"][i]
        rgb = ((sample["image"] * std + mean) * 255).round().clamp(0, 255).byte()
        Image.fromarray(rgb.permute(1, 2, 0).numpy()).save(images / f"scene{i}.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (37, 91, 3), dtype=np.uint8)).save(images / "odd.png")
    return root


def test_the_api_labels_equal_the_command_line_s(trained):
    run_dir = trained / "test" / "api"
    out = trained / "cli"
    run_main(["predict", "--config", str(run_dir / "config.yaml"), "--ckpt_path", "best",
              "--images", str(trained / "images"), "--out", str(out)])  # fmt: skip
    model = segbench.load(run_dir)
    files = sorted((trained / "images").glob("*.png"))
    results = model.predict(files)  # one call: batched by size as the command batches
    assert len(results) == 4
    for path, result in zip(files, results, strict=True):
        cli = np.asarray(Image.open(out / path.name))
        assert result.labels.shape == cli.shape
        assert np.array_equal(result.labels, cli), path.name
    one = model.predict(files[-1])  # a single image, alone in its batch
    assert np.array_equal(one.labels, results[-1].labels)


def test_a_loaded_model_leaves_the_run_free_to_start_over(trained):
    """segbench.load reads the checkpoint and writes nothing into the run: it lets go of the
    run at once (a notebook holding the model kept a `fit --run.overwrite` of it refused)."""
    import os

    run_dir = trained / "test" / "api"
    segbench.load(run_dir)
    assert not (run_dir.parent / f".api.reader-{os.getpid()}").exists()


def test_every_kind_of_input_gives_the_same_labels(trained):
    model = segbench.load(trained / "test" / "api", ckpt="last")
    path = trained / "images" / "scene0.png"
    picture = Image.open(path)
    array = np.array(picture.convert("RGB"))
    as_uint8 = torch.from_numpy(array).permute(2, 0, 1)
    kinds = [str(path), path, picture, array, as_uint8, as_uint8.float() / 255]
    results = model.predict(kinds, probs=True)
    for result in results:
        assert np.array_equal(result.labels, results[0].labels)
        assert result.probs is not None
        assert result.probs.shape == (11, *array.shape[:2])
        assert np.array_equal(result.probs.argmax(0), result.labels)
    assert np.array_equal(results[0].image, array)
    assert model.predict(array).probs is None
    overlay = results[0].overlay()
    assert overlay.height == array.shape[0]
    assert overlay.width > array.shape[1]
    assert abs(sum(results[0].share().values()) - 1) < 1e-9
    assert "bf16-mixed" in repr(model) or "32-true" in repr(model)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((8, 8), np.uint8), r"H x W x 3 uint8.*\(8, 8\)"),
        (np.zeros((8, 8, 3), np.float32), r"H x W x 3 uint8.*float32"),
        (torch.zeros(8, 8, 3), r"3 x H x W.*\(8, 8, 3\)"),
        (torch.full((3, 8, 8), 255.0), r"\[0, 1\].*255"),
        (42, "cannot predict a int"),
    ],
)
def test_a_bad_input_is_named(trained, image, message):
    model = segbench.load(trained / "test" / "api")
    with pytest.raises(DataError, match=message):
        model.predict(image)


def test_a_folder_is_refused_with_the_call_that_predicts_its_images(trained):
    """A folder used to fail 'Is a directory' while the command line takes folders: the error
    names it and gives the call that predicts its images as the command takes them."""
    from segbench.data.files import find_images

    model = segbench.load(trained / "test" / "api")
    folder = trained / "images"
    for given in (folder, str(folder), [folder]):
        with pytest.raises(DataError, match=f"{re.escape(str(folder))}: a folder, not an image"):
            model.predict(given)  # type: ignore[arg-type]
    hint = f"model.predict(find_images([{str(folder)!r}]))"
    with pytest.raises(DataError, match=re.escape(hint)):
        model.predict(folder)
    images = find_images([str(folder)])  # the call the message gives
    assert images == sorted(folder.glob("*.png"))
    assert [r.labels.shape for r in model.predict(images)] == [(37, 91)] + [(64, 64)] * 3


def test_the_docs_example_runs_as_written(trained, tmp_path, monkeypatch, capsys):
    page = (REPO / "docs" / "how-to" / "python-api.md").read_text()
    code = re.search(r"```python\n(.*?)```", page, re.S)
    assert code is not None
    (tmp_path / "runs" / "quickstart").mkdir(parents=True)
    os.symlink(trained / "test" / "api", tmp_path / "runs" / "quickstart" / "quickstart")
    Image.open(trained / "images" / "scene1.png").save(tmp_path / "scene.png")
    monkeypatch.chdir(tmp_path)
    exec(compile(code.group(1), "python-api.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("Segmenter(FCN, 11 classes")
    assert printed[1] == "(64, 64) int64"
    assert printed[3] == "(11, 64, 64) True"
    assert printed[4] == "True"
    assert (tmp_path / "scene_overlay.png").is_file()
