"""CamVid (SegNet layout) and generic folders, on tiny trees written in the real layout."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segbench.data import CamVid, FolderSegmentation
from segbench.data.camvid import ENV_VAR
from segbench.data.files import find_images, output_names, read_image, read_mask
from segbench.data.transforms import Augment
from segbench.errors import ConfigError
from tests.helpers import write_png

SEGNET_PREFIX = "/SegNet/CamVid/"


def camvid_tree(root: Path, n: int = 3, *, prefix: str = "") -> Path:
    """A CamVid tree in the SegNet layout: 36 x 48 images, labels 0..11 (11 = void)."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        lines = []
        for i in range(n):
            name = f"0001TP_{i:06d}.png"
            write_png(root / split / name, rng.integers(0, 255, (36, 48, 3), dtype=np.uint8))
            write_png(root / f"{split}annot" / name, rng.integers(0, 12, (36, 48), dtype=np.uint8))
            lines.append(f"{prefix}{split}/{name} {prefix}{split}annot/{name}")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def first_batch(dm, stage: str = "fit") -> dict:
    dm.setup(stage)
    loader = dm.train_dataloader() if stage == "fit" else dm.test_dataloader()
    return next(iter(loader))


@pytest.mark.parametrize("prefix", ["", SEGNET_PREFIX])
def test_camvid_reads_the_segnet_layout_and_maps_void(tmp_path, prefix):
    root = camvid_tree(tmp_path, prefix=prefix)
    dm = CamVid(root=str(root), batch_size=2, num_workers=0, augment=None)
    batch = first_batch(dm)
    assert batch["image"].shape == (2, 3, 36, 48)
    raw = np.asarray(Image.open(root / "trainannot" / "0001TP_000000.png"))
    mask = batch["mask"][0].numpy() if batch["name"][0] == "0001TP_000000" else None
    values = set(batch["mask"].unique().tolist())
    assert 11 not in values
    assert 255 in values
    assert values <= set(range(11)) | {255}
    if mask is not None:
        assert np.array_equal(mask == 255, raw == 11)
    assert dm.num_classes == 11
    assert len(dm.colours()) == 11


def test_camvid_reads_the_root_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(camvid_tree(tmp_path)))
    dm = CamVid(batch_size=2, num_workers=0, augment=None, test_split="val")
    assert first_batch(dm, "test")["mask"].shape == (2, 36, 48)


def test_camvid_errors_name_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(ValueError, match=ENV_VAR):
        CamVid(num_workers=0).setup("fit")
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        CamVid(root=str(tmp_path / "nowhere"), num_workers=0).setup("fit")
    root = camvid_tree(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"test\.txt"):
        CamVid(root=str(root), num_workers=0).setup("test")
    (root / "trainannot" / "0001TP_000001.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"train\.txt:2: no such file .*000001\.png"):
        CamVid(root=str(root), num_workers=0).setup("fit")


def folder_tree(root: Path, *, rgb_masks: bool = False) -> Path:
    rng = np.random.default_rng(1)
    palette = [(0, 0, 0), (255, 0, 0), (0, 255, 0)]
    for i in range(4):
        write_png(root / "images" / f"im{i}.png", rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
        labels = rng.integers(0, 3, (20, 30)).astype(np.uint8)
        labels[0, 0] = 255
        if rgb_masks:
            lut = np.array([*palette] + [(255, 255, 255)] * 253, np.uint8)
            rgb = lut[labels]
            rgb[labels == 255] = (255, 255, 255)
            write_png(root / "masks" / f"im{i}.png", rgb)
        else:
            flat = [c for col in palette for c in col]
            write_png(root / "masks" / f"im{i}.png", labels, palette=flat + [0] * (768 - len(flat)))
    (root / "train.txt").write_text("im0\nim1\n")
    (root / "val.txt").write_text("im2\nim3\n")
    return root


def make_folder(root: Path, **kwargs) -> FolderSegmentation:
    return FolderSegmentation(
        root=str(root), num_classes=3, image_suffix=".png", batch_size=2, num_workers=0, **kwargs
    )


def test_folder_reads_palette_png_indices(tmp_path):
    dm = make_folder(folder_tree(tmp_path), class_names=["bg", "a", "b"])
    batch = first_batch(dm)
    assert batch["mask"].shape == (2, 20, 30)
    assert set(batch["mask"].unique().tolist()) == {0, 1, 2, 255}
    assert dm.class_names == ("bg", "a", "b")


def test_folder_reads_rgb_masks_through_the_palette(tmp_path):
    root = folder_tree(tmp_path, rgb_masks=True)
    palette = [(0, 0, 0), (255, 0, 0), (0, 255, 0)]
    with pytest.raises(ValueError, match=r"colours \[\(255, 255, 255\)\] are not in the palette"):
        first_batch(make_folder(root, palette=palette))
    with pytest.raises(ValueError, match=r"given its colours in data\.init_args\.palette"):
        first_batch(make_folder(root))


def test_folder_errors_name_the_file(tmp_path):
    root = folder_tree(tmp_path)
    write_png(root / "masks" / "im1.png", np.full((20, 30), 7, np.uint8))
    dm = make_folder(root)
    dm.setup("fit")
    with pytest.raises(ValueError, match=r"im1\.png: label values \[7\] are outside \[0, 3\)"):
        dm.datasets["train"][1]
    write_png(root / "masks" / "im1.png", np.zeros((10, 30), np.uint8))
    with pytest.raises(ValueError, match=r"im1\.png is \(20, 30\).*im1\.png is \(10, 30\)"):
        dm.datasets["train"][1]
    (root / "images" / "im0.png").write_bytes(b"not a png")
    with pytest.raises(OSError, match=r"cannot read image .*im0\.png"):
        dm.datasets["train"][0]
    with pytest.raises(FileNotFoundError, match=r"split list not found: .*test\.txt"):
        make_folder(root).setup("test")


def test_folder_class_names_must_match(tmp_path):
    with pytest.raises(ValueError, match="2 class names for num_classes=3"):
        make_folder(tmp_path, class_names=["a", "b"])


CAMVID = os.environ.get(ENV_VAR)


@pytest.mark.skipif(
    not CAMVID or not Path(CAMVID).is_dir(),
    reason=f"real CamVid not available: set {ENV_VAR} to the SegNet-layout folder",
)
def test_real_camvid_loads_both_splits():
    dm = CamVid(batch_size=4, num_workers=0, test_split="val")
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 367
    assert len(dm.datasets["val"]) == 101
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (4, 3, 360, 480)
    values = set(batch["mask"].unique().tolist())
    assert values <= set(range(11)) | {255}
    assert torch.isfinite(batch["image"]).all()


def test_median_frequency_weights_match_a_hand_count(tmp_path):
    """freq(c) = pixels of c / pixels of images containing c; weight = median(freq) / freq(c)."""
    masks = [
        np.array([[0, 0, 1, 255]] * 2, np.uint8),  # 8 px: 4 x class 0, 2 x class 1, void
        np.array([[0, 2, 2, 2]] * 2, np.uint8),  # 8 px: 2 x class 0, 6 x class 2
    ]
    for i, m in enumerate(masks):
        write_png(tmp_path / "images" / f"im{i}.png", np.zeros((*m.shape, 3), np.uint8))
        write_png(tmp_path / "masks" / f"im{i}.png", m)
    (tmp_path / "train.txt").write_text("im0\nim1\n")
    dm = FolderSegmentation(root=str(tmp_path), num_classes=4, image_suffix=".png", num_workers=0)
    # Valid pixels per image: 6 and 8. Class 3 never occurs.
    freq = {0: 6 / 14, 1: 2 / 6, 2: 6 / 8}
    median = sorted(freq.values())[1]
    want = [median / freq[0], median / freq[1], median / freq[2], 1.0]
    assert dm.median_frequency_weights() == pytest.approx(want)


# -- images as a viewer shows them ---------------------------------------------------------------
def test_a_16_bit_png_is_scaled_not_clipped(tmp_path):
    ramp = (np.arange(64, dtype=np.uint16) * 1024).reshape(8, 8)  # 0 .. 64,512 of 65,535
    Image.fromarray(ramp).save(tmp_path / "deep.png")  # mode I;16
    img = read_image(tmp_path / "deep.png")
    assert img.shape == (3, 8, 8)
    want = np.rint(ramp.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert np.array_equal(img[0].numpy(), want)
    assert len(np.unique(img.numpy())) > 32  # a ramp, not pure white


def test_exif_orientation_turns_the_image_and_its_mask_alike(tmp_path):
    pixels = np.zeros((4, 6, 3), np.uint8)
    pixels[0, :, 0] = 255  # a red top row, as stored
    im = Image.fromarray(pixels)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display" (a phone held upright)
    im.save(tmp_path / "phone.png", exif=exif)
    img = read_image(tmp_path / "phone.png")
    assert img.shape == (3, 6, 4)  # displayed: portrait
    assert img[0, :, -1].tolist() == [255] * 6  # the stored top row is the right column
    assert img[0, :, :-1].sum() == 0
    mask = Image.fromarray(np.arange(24, dtype=np.uint8).reshape(4, 6), mode="L")
    mask.save(tmp_path / "phone_mask.png", exif=exif)
    assert read_mask(tmp_path / "phone_mask.png").shape == (6, 4)


def test_an_animated_gif_reads_its_first_frame_and_says_so(tmp_path, caplog):
    frames = [Image.new("RGB", (5, 5), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with caplog.at_level("WARNING", logger="segbench"):
        img = read_image(tmp_path / "anim.gif")
    assert img[0].float().mean() > 200  # red: frame 1
    assert "anim.gif has 2 frames: the first is read" in caplog.text


def test_folders_and_globs_follow_each_real_folder_once(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/a.png", "d/sub/b.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    (tmp_path / "d" / "sub" / "loop").symlink_to(tmp_path / "d")  # a link to a folder above
    (tmp_path / "d" / "self").symlink_to(tmp_path / "d")
    want = [tmp_path / "d" / "a.png", tmp_path / "d" / "sub" / "b.png"]
    assert find_images([str(tmp_path / "d")]) == want
    assert find_images([str(tmp_path / "d" / "**" / "*.png")]) == want
    assert find_images([f"{tmp_path}/d/*.png"]) == want[:1]  # one level: no recursion
    # The same file named three ways is one image.
    same = [str(tmp_path / "d" / "a.png"), str(tmp_path / "d" / "self" / "a.png"),
            str(tmp_path / "d" / "sub" / ".." / "a.png")]  # fmt: skip
    assert find_images(same) == [tmp_path / "d" / "a.png"]


def test_images_of_one_stem_get_names_that_say_which(tmp_path):
    paths = [tmp_path / "x" / "p.jpg", tmp_path / "x" / "p.png", tmp_path / "y" / "q.png"]
    assert output_names(paths) == ["x_p_jpg", "x_p_png", "q"]


@pytest.mark.parametrize("mode", ["CMYK", "P", "LA", "RGBA"])
def test_cmyk_palette_and_alpha_images_read_as_their_colours(tmp_path, mode):
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:8] = (200, 30, 40)  # red above, teal below
    rgb[8:] = (20, 150, 140)
    im = Image.fromarray(rgb)
    im = im.convert("L").convert("LA") if mode == "LA" else im.convert(mode)
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    im.save(path, quality=95)
    with Image.open(path) as opened:
        assert opened.mode == mode
    got = read_image(path).permute(1, 2, 0).numpy().astype(int)
    want = rgb if mode == "CMYK" else np.asarray(im.convert("RGB"))  # P: the palette's colours
    assert np.abs(got - want).max() <= (8 if mode == "CMYK" else 0)  # JPEG's loss; not inverted


def camvid_drives(root: Path) -> Path:
    """A CamVid tree whose lists hold frames of three drives, as the real one: train.txt has
    0001TP, 0006R0 and part of 0016E5, val.txt the rest of 0016E5."""
    rng = np.random.default_rng(0)
    lists = {"train": ["0001TP_000", "0001TP_001", "0006R0_000", "0016E5_000", "0016E5_001"],
             "val": ["0016E5_002", "0016E5_003"]}  # fmt: skip
    for split, stems in lists.items():
        for stem in stems:
            write_png(root / split / f"{stem}.png", rng.integers(0, 255, (36, 48, 3), np.uint8))
            write_png(
                root / f"{split}annot" / f"{stem}.png", rng.integers(0, 12, (36, 48), np.uint8)
            )
        lines = [f"{split}/{s}.png {split}annot/{s}.png" for s in stems]
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def drives(dm: CamVid, split: str) -> list[str]:
    from segbench.data.camvid import sequence

    return sorted(sequence(img) for img, _ in dm.pairs(Path(dm.root), split))


def test_camvid_validates_on_held_out_drives_that_it_never_trains_on(tmp_path):
    root = camvid_drives(tmp_path)
    published = CamVid(root=str(root), num_workers=0)
    assert set(drives(published, "train")) & set(drives(published, "val")) == {"0016E5"}
    for held_out in (["0001TP"], ["0006R0"], ["0016E5"], ["0001TP", "0006R0"]):
        dm = CamVid(root=str(root), num_workers=0, val_sequences=held_out)
        train, val = drives(dm, "train"), drives(dm, "val")
        assert set(val) == set(held_out)
        assert not set(train) & set(val)  # no drive in both
        assert len(train) + len(val) == 7  # every labelled frame is used once
        tested = CamVid(root=str(root), num_workers=0, val_sequences=held_out, test_split="val")
        assert drives(tested, "test") == val  # "val": the held-out drives, not val.txt
    dm = CamVid(root=str(root), num_workers=0, val_sequences=["0016E5"], batch_size=2, augment=None)
    assert first_batch(dm)["image"].shape == (2, 3, 36, 48)
    everything = CamVid(root=str(root), num_workers=0, train_on_val=True)
    assert len(drives(everything, "train")) == 7


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"val_sequences": ["Seq05VD"]}, "Seq05VD not in"),
        ({"val_sequences": ["0001TP", "0006R0", "0016E5"]}, "is every sequence"),
        ({"val_sequences": []}, "name at least one sequence"),
        ({"val_sequences": [1600000.0]}, r"1600000\.0 is a number.*quote the names"),
        ({"val_sequences": ["0006R0"], "train_on_val": True}, "use one or the other"),
    ],
)
def test_camvid_held_out_drive_errors_name_the_key(tmp_path, kwargs, named):
    root = camvid_drives(tmp_path)

    def split() -> None:
        CamVid(root=str(root), num_workers=0, **kwargs).pairs(root, "train")

    with pytest.raises(ConfigError, match=named) as err:
        split()
    assert "data.init_args" in str(err.value)
    if "not in" in named:
        assert "0001TP, 0006R0, 0016E5" in str(err.value)  # the sequences there are


def test_real_camvid_held_out_drives_split_every_frame_once():
    root = os.environ.get("SEGBENCH_CAMVID")
    if not root:
        pytest.skip("SEGBENCH_CAMVID is not set (the real CamVid is not on this machine)")
    counts = {}
    for held_out in ("0001TP", "0006R0", "0016E5"):
        dm = CamVid(root=root, num_workers=0, val_sequences=[held_out])
        train, val = drives(dm, "train"), drives(dm, "val")
        assert set(val) == {held_out}
        assert held_out not in train
        counts[held_out] = (len(train), len(val))
    assert counts == {"0001TP": (406, 62), "0006R0": (367, 101), "0016E5": (163, 305)}


def test_a_cached_pair_reads_bit_identical_and_follows_a_changed_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGBENCH_CACHE", str(tmp_path / "cache"))
    root = camvid_tree(tmp_path / "camvid")
    augment = Augment(scale_range=(0.5, 1.5), crop_size=(24, 32), flip=True, blur=1.0)
    plain, cached = (
        CamVid(root=str(root), batch_size=3, num_workers=0, augment=augment, cache=cache)
        for cache in (False, True)
    )
    for _ in range(2):  # decoded and kept, then read from the cache folder
        a, b = first_batch(plain), first_batch(cached)
        for key in ("image", "mask"):
            assert a[key].dtype == b[key].dtype
            assert torch.equal(a[key], b[key])
        plain.datasets.clear()
        cached.datasets.clear()
    kept = sorted((tmp_path / "cache" / "decoded").glob("*.npz"))
    assert len(kept) == 3
    cached.setup("fit")
    pairs = cached.datasets["train"]
    name = root / "trainannot" / "0001TP_000000.png"
    write_png(name, np.full((36, 48), 3, dtype=np.uint8))
    os.utime(name, ns=(1, 1))  # a different modification time, as an edit would give
    index = [p[1] for p in pairs.pairs].index(name)
    _, mask = pairs.load(index)
    assert torch.equal(mask, torch.full((36, 48), 3, dtype=mask.dtype))
    assert len(list((tmp_path / "cache" / "decoded").glob("*.npz"))) == 4
