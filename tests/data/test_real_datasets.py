"""PASCAL VOC + SBD, Cityscapes, ADE20K and PASCAL-Context on tiny trees in the official layouts.

Each tree is written here in the exact layout and encoding of the official archives: VOC's palette
PNGs with void borders, SBD's folders and lists (its labels as the PNGs `segbench convert-sbd`
writes), Cityscapes' city folders and labelIds, ADE20K's 0..150 maps, PASCAL-Context's 0..59 maps.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segbench.cli import main as segbench_main
from segbench.data import ADE20K, Cityscapes, PascalContext, PascalVOC
from segbench.data.base import default_palette
from segbench.data.cityscapes import ENV_VAR as CITYSCAPES_ENV
from segbench.data.convert_sbd import convert_sbd, voc_palette_png
from segbench.data.voc import SBD_ENV, VOC_ENV
from segbench.errors import ConfigError
from tests.helpers import write_png

VOC_PALETTE = [c for rgb in default_palette(256) for c in rgb]
H, W = 20, 28


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def write_jpeg(path: Path, seed: int, size: tuple[int, int] = (H, W)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)


def write_lines(path: Path, names: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{n}\n" for n in names))


def load_all(dm, split: str) -> dict[str, dict]:
    """Every sample of a split by name (no augmentation)."""
    dm.setup({"train": "fit", "val": "validate", "test": "test"}[split])
    ds = dm.datasets[split]
    return {s["name"]: s for s in (ds[i] for i in range(len(ds)))}


# -- PASCAL VOC + SBD ---------------------------------------------------------------------------
VOC_TRAIN = ["2007_000032", "2007_000039", "2008_000008"]
VOC_VAL = ["2007_000033", "2007_000042"]
SBD_TRAIN = ["2007_000039", "2007_000042", "2008_000100", "2008_000200"]
SBD_VAL = ["2007_000032", "2009_000300"]
#: (SBD train ∪ SBD val ∪ VOC train) − VOC val
TRAIN_AUG = sorted({*SBD_TRAIN, *SBD_VAL, *VOC_TRAIN} - set(VOC_VAL))


def voc_label(seed: int) -> np.ndarray:
    """A VOC-style label: class regions with a 1-px void (255) border around the object."""
    label = np.zeros((H, W), np.uint8)
    label[4:14, 6:20] = 1 + seed % 20
    label[3, 5:21] = label[14, 5:21] = 255
    label[3:15, 5] = label[3:15, 20] = 255
    return label


def sbd_label(seed: int) -> np.ndarray:
    """An SBD-style label: class regions, no void."""
    return rng(100 + seed).integers(0, 21, (H, W)).astype(np.uint8)


def voc_tree(root: Path) -> Path:
    """``root/VOCdevkit/VOC2012`` as in VOCtrainval_11-May-2012.tar (JPEGImages holds every image
    of VOC and SBD except 2009_000300, which only SBD's img/ has)."""
    voc = root / "VOCdevkit" / "VOC2012"
    seg = voc / "ImageSets" / "Segmentation"
    write_lines(seg / "train.txt", VOC_TRAIN)
    write_lines(seg / "val.txt", VOC_VAL)
    write_lines(seg / "trainval.txt", VOC_TRAIN + VOC_VAL)
    write_lines(seg / "seg11valid.txt", VOC_VAL[:1])
    for i, name in enumerate(sorted({*VOC_TRAIN, *VOC_VAL, *SBD_TRAIN, *SBD_VAL})):
        if name != "2009_000300":
            write_jpeg(voc / "JPEGImages" / f"{name}.jpg", i)
    for i, name in enumerate(VOC_TRAIN + VOC_VAL):
        write_png(voc / "SegmentationClass" / f"{name}.png", voc_label(i), palette=VOC_PALETTE)
    return root


def sbd_tree(root: Path, *, converted: bool = True) -> Path:
    """``benchmark_RELEASE/dataset`` of benchmark.tgz; ``cls_png/`` as convert-sbd writes it."""
    sbd = root / "benchmark_RELEASE" / "dataset"
    write_lines(sbd / "train.txt", SBD_TRAIN)
    write_lines(sbd / "val.txt", SBD_VAL)
    (sbd / "cls").mkdir(parents=True)
    (sbd / "inst").mkdir()
    for i, name in enumerate(SBD_TRAIN + SBD_VAL):
        write_jpeg(sbd / "img" / f"{name}.jpg", 50 + i)
        if converted:
            (sbd / "cls_png").mkdir(exist_ok=True)
            voc_palette_png(sbd_label(i)).save(sbd / "cls_png" / f"{name}.png")
    return sbd


def make_voc(tmp_path: Path, **kwargs) -> PascalVOC:
    kwargs.setdefault("root", str(voc_tree(tmp_path / "voc")))
    kwargs.setdefault("sbd_root", str(sbd_tree(tmp_path / "sbd")))
    return PascalVOC(num_workers=0, augment=None, **kwargs)


def test_voc_reads_palette_pngs_through_torchvision(tmp_path):
    dm = make_voc(tmp_path, train_split="train")
    train = load_all(dm, "train")
    assert sorted(train) == VOC_TRAIN
    for i, name in enumerate(VOC_TRAIN):
        assert train[name]["image"].shape == (3, H, W)
        assert torch.equal(train[name]["mask"], torch.from_numpy(voc_label(i)).long())
    assert sorted(load_all(dm, "val")) == VOC_VAL
    assert sorted(load_all(dm, "test")) == VOC_VAL  # VOC2012 test labels are not public
    assert dm.num_classes == 21
    assert dm.class_names[0] == "background"
    assert dm.class_names[15] == "person"
    assert dm.palette[1] == (128, 0, 0)  # aeroplane in VOC's colour map


def test_voc_train_aug_is_sbd_plus_voc_train_minus_voc_val(tmp_path):
    dm = make_voc(tmp_path)
    samples = load_all(dm, "train")
    assert sorted(samples) == TRAIN_AUG
    assert not set(samples) & set(VOC_VAL)
    # An image in VOC train keeps VOC's label (with its void border), also when SBD has it too.
    both = "2007_000039"
    assert both in SBD_TRAIN
    want = torch.from_numpy(voc_label(VOC_TRAIN.index(both))).long()
    assert torch.equal(samples[both]["mask"], want)
    # The others take SBD's converted label.
    for name in ("2008_000100", "2009_000300"):
        i = (SBD_TRAIN + SBD_VAL).index(name)
        assert torch.equal(samples[name]["mask"], torch.from_numpy(sbd_label(i)).long())
    # 2009_000300 is missing from VOC's JPEGImages: its image comes from SBD's img/.
    assert samples["2009_000300"]["image"].shape == (3, H, W)


def test_voc_sbd_and_named_lists(tmp_path):
    dm = make_voc(tmp_path, train_split="sbd_train", val_split="seg11valid", test_split="sbd_val")
    assert sorted(load_all(dm, "train")) == sorted(SBD_TRAIN)
    assert sorted(load_all(dm, "val")) == VOC_VAL[:1]
    assert sorted(load_all(dm, "test")) == sorted(SBD_VAL)


@pytest.mark.parametrize("below", ["", "VOCdevkit", "VOCdevkit/VOC2012"])
def test_voc_root_may_be_any_of_the_three_folders(tmp_path, below, monkeypatch):
    root = voc_tree(tmp_path / "voc")
    monkeypatch.setenv(VOC_ENV, str(root / below))
    monkeypatch.setenv(SBD_ENV, str(sbd_tree(tmp_path / "sbd") / ".."))  # benchmark_RELEASE
    dm = PascalVOC(num_workers=0, augment=None)
    assert sorted(load_all(dm, "train")) == TRAIN_AUG


def test_voc_errors_say_what_was_expected_where(tmp_path, monkeypatch):
    monkeypatch.delenv(VOC_ENV, raising=False)
    monkeypatch.delenv(SBD_ENV, raising=False)
    with pytest.raises(ValueError, match=r"set data\.init_args\.root or \$SEGBENCH_VOC"):
        PascalVOC(num_workers=0).setup("fit")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"VOCdevkit/VOC2012 with JPEGImages.*missing"):
        PascalVOC(root=str(tmp_path / "empty"), num_workers=0).setup("validate")
    voc = str(voc_tree(tmp_path / "voc"))
    with pytest.raises(ValueError, match=r"\$SEGBENCH_SBD"):
        PascalVOC(root=voc, num_workers=0).setup("fit")
    # SBD without its converted labels: the error gives the command that writes them.
    sbd = sbd_tree(tmp_path / "my sbd", converted=False)
    with pytest.raises(
        FileNotFoundError, match=r"(?s)3 listed file\(s\) missing.*convert-sbd"
    ) as err:
        PascalVOC(root=voc, sbd_root=str(sbd), num_workers=0).setup("fit")
    command = re.search(r"`(segbench convert-sbd .*?)`", str(err.value)).group(1)
    assert shlex.split(command)[2] == str(sbd)  # a command to copy: the path quoted
    with pytest.raises(FileNotFoundError, match=r"split list not found: .*nosuch\.txt"):
        PascalVOC(root=voc, val_split="nosuch", num_workers=0).setup("validate")
    (sbd / "train.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"SBD: expected .* missing: train\.txt"):
        PascalVOC(root=voc, sbd_root=str(sbd), num_workers=0).setup("fit")
    (Path(voc) / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"split list not found: .*Segmentation/val\.txt"):
        PascalVOC(root=voc, num_workers=0).setup("validate")


def fake_scipy(monkeypatch) -> None:
    """scipy is not installed here: stand in a ``scipy.io.loadmat`` that reads the label arrays
    the test stored (as .npy bytes) and returns them in the nesting scipy gives SBD's struct,
    ``mat["GTcls"][0]["Segmentation"][0]``. torchvision's SBDataset and our conversion run
    unchanged on top of it."""

    def loadmat(path: str) -> dict:
        gtcls = np.empty((1, 1), dtype=[("Segmentation", object), ("Boundaries", object)])
        gtcls[0, 0] = (np.load(path), None)
        return {"GTcls": gtcls}

    scipy = types.ModuleType("scipy")
    scipy_io = types.ModuleType("scipy.io")
    scipy_io.loadmat = loadmat  # type: ignore[attr-defined]
    scipy.io = scipy_io  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "scipy", scipy)
    monkeypatch.setitem(sys.modules, "scipy.io", scipy_io)


def test_convert_sbd_writes_palette_pngs_of_every_listed_label(tmp_path, monkeypatch, capsys):
    fake_scipy(monkeypatch)
    sbd = sbd_tree(tmp_path, converted=False)
    for i, name in enumerate(SBD_TRAIN + SBD_VAL):
        with (sbd / "cls" / f"{name}.mat").open("wb") as f:
            np.save(f, sbd_label(i))
    segbench_main(["convert-sbd", str(sbd.parent)])  # benchmark_RELEASE is accepted too
    assert f"wrote 6 label PNGs to {sbd / 'cls_png'}" in capsys.readouterr().out
    for i, name in enumerate(SBD_TRAIN + SBD_VAL):
        png = Image.open(sbd / "cls_png" / f"{name}.png")
        assert png.mode == "P"
        assert np.array_equal(np.asarray(png), sbd_label(i))
    assert convert_sbd(sbd) == 0  # existing PNGs are kept
    assert convert_sbd(sbd, overwrite=True) == 6
    with (sbd / "cls" / f"{SBD_VAL[0]}.mat").open("wb") as f:
        np.save(f, np.full((H, W), 21, np.uint8))
    with pytest.raises(ValueError, match=r"2007_000032\.mat: .*values 0\.\.20"):
        convert_sbd(sbd, overwrite=True)


def test_convert_sbd_stopped_mid_file_leaves_no_half_png_for_a_rerun_to_keep(tmp_path, monkeypatch):
    """A kill while a label PNG was saved left it cut short under its real name, and a rerun
    keeps existing PNGs: the label map stayed unreadable. Each PNG is written whole or not at
    all, so the rerun converts what the stopped one had not."""
    fake_scipy(monkeypatch)
    sbd = sbd_tree(tmp_path, converted=False)
    for i, name in enumerate(SBD_TRAIN + SBD_VAL):
        with (sbd / "cls" / f"{name}.mat").open("wb") as f:
            np.save(f, sbd_label(i))
    save, calls = Image.Image.save, []

    def stopped_at_the_second(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == 2:
            with contextlib.ExitStack() as stack:
                f = stack.enter_context(open(fp, "wb")) if isinstance(fp, str | Path) else fp
                f.write(b"\x89PNG\r\n\x1a\n half a label map")
            raise KeyboardInterrupt  # the signal, half-way through the file
        return save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", stopped_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        convert_sbd(sbd)
    monkeypatch.setattr(Image.Image, "save", save)
    assert convert_sbd(sbd) == 5
    for i, name in enumerate(SBD_TRAIN + SBD_VAL):
        assert np.array_equal(np.asarray(Image.open(sbd / "cls_png" / f"{name}.png")), sbd_label(i))
    assert sorted(p.name for p in (sbd / "cls_png").iterdir()) == sorted(
        f"{name}.png" for name in SBD_TRAIN + SBD_VAL
    )


def test_convert_sbd_without_scipy_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy", None)  # `import scipy` fails as if not installed
    with pytest.raises(RuntimeError, match=r"pip install scipy"):
        convert_sbd(sbd_tree(tmp_path, converted=False))


def test_convert_sbd_reads_real_mat_files_with_scipy(tmp_path):
    sio = pytest.importorskip("scipy.io", reason="scipy is not installed (optional)")
    sbd = sbd_tree(tmp_path, converted=False)
    for i, name in enumerate(SBD_TRAIN + SBD_VAL):
        boundaries = np.empty((20, 1), object)  # SBD: one (sparse) boundary map per class
        for c in range(20):
            boundaries[c, 0] = np.zeros_like(sbd_label(i))
        gtcls = {"Segmentation": sbd_label(i), "Boundaries": boundaries}
        sio.savemat(sbd / "cls" / f"{name}.mat", {"GTcls": gtcls})
    assert convert_sbd(sbd) == 6
    png = np.asarray(Image.open(sbd / "cls_png" / f"{SBD_TRAIN[0]}.png"))
    assert np.array_equal(png, sbd_label(0))


# -- Cityscapes ---------------------------------------------------------------------------------
CITIES = {"train": ["aachen", "bochum"], "val": ["frankfurt"]}
#: labelId -> trainId for the values written below (unlabeled, road, sidewalk, parking,
#: car, caravan, bicycle).
CITYSCAPES_IDS = {0: 255, 7: 0, 8: 1, 9: 255, 26: 13, 29: 255, 33: 18}


def cityscapes_tree(root: Path) -> Path:
    ids = np.array(list(CITYSCAPES_IDS), np.uint8)
    for split, cities in CITIES.items():
        for c, city in enumerate(cities):
            for frame in (19, 3):
                stem = f"{city}_{c:06d}_{frame:06d}"
                img = root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
                img.parent.mkdir(parents=True, exist_ok=True)
                write_png(img, rng(frame).integers(0, 255, (H, W, 3), dtype=np.uint8))
                label = ids[rng(c + frame).integers(0, len(ids), (H, W))]
                gt = root / "gtFine" / split / city
                write_png(gt / f"{stem}_gtFine_labelIds.png", label)
                train_ids = np.vectorize(CITYSCAPES_IDS.get)(label).astype(np.uint8)
                write_png(gt / f"{stem}_gtFine_labelTrainIds.png", train_ids)
                write_png(gt / f"{stem}_gtFine_color.png", np.zeros((H, W, 3), np.uint8))
    return root


@pytest.mark.parametrize("labels", ["labelIds", "labelTrainIds"])
def test_cityscapes_maps_label_ids_to_the_19_train_ids(tmp_path, labels):
    root = cityscapes_tree(tmp_path)
    dm = Cityscapes(root=str(root), labels=labels, num_workers=0, augment=None)
    train = load_all(dm, "train")
    assert list(dm.datasets["train"].pairs) == sorted(dm.datasets["train"].pairs)
    assert len(train) == 4
    name = "bochum_000001_000003_leftImg8bit"
    raw = np.asarray(
        Image.open(root / "gtFine/train/bochum/bochum_000001_000003_gtFine_labelIds.png")
    )
    want = np.vectorize(CITYSCAPES_IDS.get)(raw)
    assert np.array_equal(train[name]["mask"].numpy(), want)
    assert set(train[name]["mask"].unique().tolist()) <= {0, 1, 13, 18, 255}
    assert sorted(load_all(dm, "test")) == sorted(load_all(dm, "val"))  # test reads val
    assert dm.num_classes == 19
    assert (dm.class_names[0], dm.class_names[13], dm.class_names[18]) == ("road", "car", "bicycle")
    assert dm.palette[0] == (128, 64, 128)


def test_cityscapes_errors_say_what_was_expected_where(tmp_path, monkeypatch):
    monkeypatch.delenv(CITYSCAPES_ENV, raising=False)
    with pytest.raises(ValueError, match=r"\$SEGBENCH_CITYSCAPES"):
        Cityscapes(num_workers=0).setup("fit")
    root = cityscapes_tree(tmp_path)
    monkeypatch.setenv(CITYSCAPES_ENV, str(root))
    with pytest.raises(
        FileNotFoundError, match=r"gtFine_trainvaltest\.zip.*missing: .*gtFine/test"
    ):
        Cityscapes(num_workers=0, test_split="test").setup("test")
    gt = root / "gtFine/val/frankfurt/frankfurt_000000_000019_gtFine_labelIds.png"
    gt.unlink()
    with pytest.raises(FileNotFoundError, match=r"(?s)1 listed file\(s\) missing.*000019_gtFine"):
        Cityscapes(num_workers=0).setup("validate")
    write_png(gt, np.full((H, W), 40, np.uint8))
    dm = Cityscapes(num_workers=0)
    dm.setup("validate")
    with pytest.raises(ValueError, match=r"000019_gtFine_labelIds\.png: label values \[40\]"):
        dm.datasets["val"][1]


# -- ADE20K -------------------------------------------------------------------------------------
def ade20k_tree(root: Path) -> Path:
    ade = root / "ADEChallengeData2016"
    for folder, prefix, n in (("training", "ADE_train", 3), ("validation", "ADE_val", 2)):
        for i in range(1, n + 1):
            size = (H + i, W - i)  # the images differ in size
            write_jpeg(ade / "images" / folder / f"{prefix}_{i:08d}.jpg", i, size)
            label = rng(i).integers(0, 151, size).astype(np.uint8)
            label[0, :3] = (0, 1, 150)
            write_png(ade / "annotations" / folder / f"{prefix}_{i:08d}.png", label)
    return root


def test_ade20k_reduces_the_zero_label_to_void(tmp_path):
    root = ade20k_tree(tmp_path)
    dm = ADE20K(root=str(root), num_workers=0, augment=None)
    train = load_all(dm, "train")
    assert sorted(train) == [f"ADE_train_{i:08d}" for i in (1, 2, 3)]
    raw = np.asarray(
        Image.open(root / "ADEChallengeData2016/annotations/training/ADE_train_00000002.png")
    )
    mask = train["ADE_train_00000002"]["mask"].numpy()
    assert np.array_equal(mask, np.where(raw == 0, 255, raw.astype(np.int64) - 1))
    assert mask[0, :3].tolist() == [255, 0, 149]
    assert sorted(load_all(dm, "test")) == ["ADE_val_00000001", "ADE_val_00000002"]
    assert dm.num_classes == 150
    assert len(dm.palette) == 150
    assert (dm.class_names[0], dm.class_names[149]) == ("wall", "flag")
    # Images of different sizes are evaluated one at a time by default.
    dm.setup("validate")
    assert [b["mask"].shape for b in dm.val_dataloader()] == [(1, H + 1, W - 1), (1, H + 2, W - 2)]


def test_ade20k_errors_name_what_is_missing(tmp_path):
    root = ade20k_tree(tmp_path)
    dm = ADE20K(root=str(root), num_workers=0, val_batch_size=2)
    dm.setup("validate")
    with pytest.raises(  # a user error (no traceback), not a RuntimeError
        ConfigError, match=r"different sizes .* at a time \(data\.init_args\.val_batch_size 1\)"
    ):
        next(iter(dm.val_dataloader()))
    (root / "ADEChallengeData2016/annotations/validation/ADE_val_00000002.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"ADE_val_00000002\.png"):
        ADE20K(root=str(root), num_workers=0).setup("validate")
    with pytest.raises(FileNotFoundError, match=r"images/training \(JPEG images\)"):
        ADE20K(root=str(tmp_path / "ADEChallengeData2016" / "images"), num_workers=0).setup("fit")


# -- PASCAL-Context -----------------------------------------------------------------------------
def pascal_context_tree(root: Path) -> Path:
    voc = root / "VOCdevkit" / "VOC2010"
    names = {"train": ["2008_000002", "2008_000003"], "val": ["2008_000007"]}
    for split, listed in names.items():
        write_lines(voc / "ImageSets" / "SegmentationContext" / f"{split}.txt", listed)
        for i, name in enumerate(listed):
            write_jpeg(voc / "JPEGImages" / f"{name}.jpg", i)
            label = rng(i).integers(0, 60, (H, W)).astype(np.uint8)
            label[0, :2] = (0, 59)
            write_png(voc / "SegmentationClassContext" / f"{name}.png", label)
    return root


@pytest.mark.parametrize(("background", "k"), [("class", 60), ("void", 59)])
def test_pascal_context_has_59_classes_plus_background(tmp_path, background, k):
    root = pascal_context_tree(tmp_path)
    dm = PascalContext(root=str(root), background=background, num_workers=0, augment=None)
    train = load_all(dm, "train")
    assert sorted(train) == ["2008_000002", "2008_000003"]
    raw = np.asarray(
        Image.open(root / "VOCdevkit/VOC2010/SegmentationClassContext/2008_000003.png")
    )
    mask = train["2008_000003"]["mask"].numpy()
    if background == "class":
        assert np.array_equal(mask, raw)
        assert dm.class_names[:2] == ("background", "aeroplane")
    else:
        assert np.array_equal(mask, np.where(raw == 0, 255, raw.astype(np.int64) - 1))
        assert dm.class_names[0] == "aeroplane"
    assert dm.num_classes == k
    assert len(dm.palette) == k
    assert dm.class_names[-1] == "wood"
    assert sorted(load_all(dm, "test")) == ["2008_000007"]


def test_pascal_context_errors_say_what_was_expected_where(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(FileNotFoundError, match=r"VOCdevkit/VOC2010.*SegmentationClassContext"):
        PascalContext(root=str(tmp_path / "x"), num_workers=0).setup("fit")
    root = pascal_context_tree(tmp_path)
    (root / "VOCdevkit/VOC2010/ImageSets/SegmentationContext/val.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"SegmentationContext/val\.txt"):
        PascalContext(root=str(root / "VOCdevkit"), num_workers=0).setup("validate")


# -- end to end ---------------------------------------------------------------------------------
def test_fit_and_test_on_voc_train_aug_with_the_papers_protocols(tmp_path, monkeypatch):
    """The CLI on the VOC + SBD tree: data section + overrides, 21 classes linked into the model,
    sliding-window validation and multi-scale + flip testing at the labels' size."""
    from tests.helpers import REPO, metrics, run_main, tiny_args

    monkeypatch.setenv(VOC_ENV, str(voc_tree(tmp_path / "voc")))
    monkeypatch.setenv(SBD_ENV, str(sbd_tree(tmp_path / "sbd")))
    args = tiny_args(tmp_path / "runs", extra=["--run.test_after_fit", "true"])
    # Drop the synthetic set's own keys (flag and value) from the tiny run's arguments.
    keys = ("num_train", "num_val", "num_test", "image_size")
    synthetic = {f"--data.init_args.{k}" for k in keys}
    kept = [a for i, a in enumerate(args) if a not in synthetic and args[i - 1] not in synthetic]
    run_main(
        [
            "fit",
            *kept,
            "--config",
            str(REPO / "experiments" / "datasets" / "voc_aug.yaml"),
            "--data.init_args.num_workers",
            "0",
            "--data.init_args.batch_size",
            "2",
            "--data.init_args.augment.crop_size",
            "[16, 16]",
            "--model.class_weights",
            "null",
            "--model.val_protocol.mode",
            "slide",
            "--model.val_protocol.crop_size",
            "[16, 16]",
            "--model.val_protocol.stride",
            "[8, 8]",
            "--model.test_protocol.scales",
            "[0.5, 1.0]",
            "--model.test_protocol.flip",
            "true",
        ]
    )
    m = metrics(tmp_path / "runs" / "test" / "tiny")
    assert "val/IoU/aeroplane" in m["val"]
    assert "test/IoU/tvmonitor" in m["test"]
    assert m["config"]["data.init_args.train_split"] == "train_aug"
    assert m["config"]["model.test_protocol.flip"] is True
