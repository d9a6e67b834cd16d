"""The embedded synthetic scenes keep their promises."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from segbench.analysis.cue_distance import cue_distances
from segbench.cache import written_once
from segbench.data.synthetic import (
    BIRD,
    BOAT,
    CAR,
    CLASS_NAMES,
    GRASS,
    POLE,
    SCENE_STUFF,
    SCENE_VEHICLE,
    SKY,
    SyntheticSegmentation,
    _draw_bird,
    _draw_pole,
    _draw_vehicle,
    render_scene,
    scene_cache,
)
from segbench.errors import ConfigError

SIZE = (96, 128)


def digest(split: str, index: int, seed: int = 0) -> str:
    img, label, _ = render_scene(seed, split, index, SIZE)
    return hashlib.sha1(img.tobytes() + label.tobytes()).hexdigest()


def test_rendering_is_deterministic_and_seeded():
    assert digest("train", 3) == digest("train", 3)
    assert digest("train", 3) != digest("train", 3, seed=1)


def test_splits_never_share_an_image():
    hashes = {s: {digest(s, i) for i in range(150)} for s in ("train", "val", "test")}
    assert all(len(h) == 150 for h in hashes.values())
    assert not hashes["train"] & hashes["val"]
    assert not hashes["train"] & hashes["test"]
    assert not hashes["val"] & hashes["test"]


def test_every_class_appears_with_its_scene():
    seen = np.zeros(len(CLASS_NAMES), bool)
    for i in range(120):
        _, label, scene = render_scene(0, "train", i, SIZE)
        present = set(np.unique(label).tolist())
        seen[list(present)] = True
        # Boats only at the coast, cars only in the city: the scene decides.
        assert BOAT not in present or scene == "coast"
        assert CAR not in present or scene == "city"
        other_stuff = {c for s, cs in SCENE_STUFF.items() if s != scene for c in cs}
        assert not present & other_stuff
    assert seen.all(), [n for n, s in zip(CLASS_NAMES, seen, strict=True) if not s]


def test_boat_and_car_are_drawn_identically():
    """Same random stream -> the same pixels; only the label differs."""
    imgs, labels = [], []
    for cls in (BOAT, CAR):
        img = np.zeros((*SIZE, 3), np.float32)
        label = np.zeros(SIZE, np.uint8)
        _draw_vehicle(img, label, cls, np.random.default_rng(7), top=20)
        imgs.append(img)
        labels.append(label)
    assert np.array_equal(imgs[0], imgs[1])
    assert np.array_equal(labels[0] == BOAT, labels[1] == CAR)
    assert (labels[0] == BOAT).any()


@pytest.mark.parametrize("seed", range(30))
def test_poles_are_thin_and_birds_small(seed):
    img = np.zeros((*SIZE, 3), np.float32)
    label = np.zeros(SIZE, np.uint8)
    _draw_pole(img, label, np.random.default_rng(seed), top=20)
    pole = label == POLE
    if pole.any():
        ys, xs = np.nonzero(pole)
        length = np.hypot(np.ptp(ys) + 1, np.ptp(xs) + 1)
        assert pole.sum() / length <= 2.5  # mean thickness: 1-2 px lines
    label[:] = 0
    _draw_bird(img, label, np.random.default_rng(seed), horizon=30)
    assert 1 <= (label == BIRD).sum() <= 25  # a few pixels: 2-5 px across


@pytest.mark.parametrize("seed", range(10))
def test_detail_scale_widens_poles_and_birds_and_nothing_else(seed):
    """The same draws at ``detail_scale`` 4: poles about 4x as thick, birds 4x across (16x the
    pixels), every other pixel's class as at scale 1 where neither kind is drawn."""
    img = np.zeros((*SIZE, 3), np.float32)
    label1, label4 = np.zeros(SIZE, np.uint8), np.zeros(SIZE, np.uint8)
    _draw_pole(img, label1, np.random.default_rng(seed), top=20)
    _draw_pole(img, label4, np.random.default_rng(seed), top=20, scale=4)
    if (label1 == POLE).sum() > 10:  # long enough to measure a thickness
        ratio = (label4 == POLE).sum() / (label1 == POLE).sum()
        assert 2.5 < ratio < 6
        assert ((label1 == POLE) <= (label4 == POLE)).all()  # the same line, widened
    label1[:], label4[:] = 0, 0
    _draw_bird(img, label1, np.random.default_rng(seed), horizon=30)
    _draw_bird(img, label4, np.random.default_rng(seed), horizon=30, scale=4)
    assert ((label1 == BIRD) <= (label4 == BIRD)).all()
    assert (label4 == BIRD).sum() >= 6 * (label1 == BIRD).sum()  # fewer at the image border
    scene1 = render_scene(seed, "val", 0, (128, 128))
    scene4 = render_scene(seed, "val", 0, (128, 128), detail_scale=4)
    assert scene1[2] == scene4[2]
    others = ~np.isin(scene1[1], [POLE, BIRD]) & ~np.isin(scene4[1], [POLE, BIRD])
    assert np.array_equal(scene1[1][others], scene4[1][others])


@pytest.mark.parametrize(("size", "gap"), [((128, 128), 0.3), ((96, 160), 0.1), ((64, 64), 0.4)])
def test_cue_gap_puts_vehicles_that_far_from_their_cue(size, gap):
    """With ``cue_gap`` the scene's stuff fills a band of a third of the width on one side (as
    often on the left as on the right), grass the rest, and every boat or car pixel lies at least
    ``gap`` x width from the nearest pixel of its cue."""
    w = size[1]
    sides, with_vehicle = set(), 0
    for i in range(60):
        _, label, scene = render_scene(0, "val", i, size, cue_gap=gap)
        usual = render_scene(0, "val", i, size)
        assert scene == usual[2]
        if SCENE_VEHICLE[scene] is None:  # countryside: no cue to keep apart from
            assert np.array_equal(label, usual[1])
            continue
        cue = np.isin(label, SCENE_STUFF[scene])
        band_cols = np.flatnonzero(cue.any(0))
        assert len(band_cols) <= int(np.ceil(w / 3))
        sides.add("left" if band_cols[0] == 0 else "right")
        d, images, _ = cue_distances([torch.from_numpy(label)], {SCENE_VEHICLE[scene]: list(
            SCENE_STUFF[scene])})[SCENE_VEHICLE[scene]]  # fmt: skip
        if images:
            with_vehicle += 1
            assert d.min() >= gap * w - 1e-6
            # Vehicles stand on grass: the ground under and around them is grass only.
            ground = ~np.isin(label, [SKY, POLE, BIRD, SCENE_VEHICLE[scene]]) & ~cue
            assert set(np.unique(label[ground]).tolist()) <= {GRASS}
    assert sides == {"left", "right"}
    assert with_vehicle >= 20


def test_cue_gap_is_checked_and_keys_its_own_cache(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"data\.init_args\.cue_gap must be in"):
        SyntheticSegmentation(cue_gap=0.5)
    monkeypatch.setenv("SEGBENCH_CACHE", str(tmp_path))
    dm = SyntheticSegmentation(num_train=2, num_val=3, num_test=2, image_size=(40, 56),
                               cue_gap=0.25)  # fmt: skip
    dm.setup("validate")
    assert len(list((tmp_path / "synthetic").glob("*-3-40x56-cuegap0.25.npy"))) == 1
    _, label, _ = render_scene(0, "val", 2, (40, 56), cue_gap=0.25)
    assert np.array_equal(dm.datasets["val"].scene(2)[1], label)


def test_datamodule_yields_normalised_batches_of_the_right_types():
    dm = SyntheticSegmentation(
        num_train=8, num_val=4, num_test=4, image_size=SIZE, batch_size=4, num_workers=0
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, *SIZE)
    assert batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (4, *SIZE)
    assert batch["mask"].dtype == torch.int64
    assert type(batch["image"]) is torch.Tensor
    assert len(batch["name"]) == 4
    assert dm.num_classes == len(CLASS_NAMES) == len(dm.colours())


def test_declared_normalisation_matches_the_data():
    pixels = (
        np.concatenate(
            [render_scene(0, "train", i, (128, 128))[0].reshape(-1, 3) for i in range(300)]
        )
        / 255.0
    )
    assert pixels.mean(0) == pytest.approx(SyntheticSegmentation.mean, abs=0.02)
    assert pixels.std(0) == pytest.approx(SyntheticSegmentation.std, abs=0.02)


def test_the_scene_cache_holds_exactly_the_rendered_scenes(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGBENCH_CACHE", str(tmp_path))
    cached = SyntheticSegmentation(num_train=5, num_val=3, num_test=2, image_size=(40, 56))
    fresh = SyntheticSegmentation(
        num_train=5, num_val=3, num_test=2, image_size=(40, 56), cache=False
    )
    for dm in (cached, fresh):
        dm.setup("fit")
    files = sorted(p.name for p in (tmp_path / "synthetic").glob("*.npy"))
    assert len(files) == 2  # train and val, keyed by seed, split, length and size
    assert all(f"-{n}-40x56.npy" in f for f, n in zip(files, (5, 3), strict=True))
    for split in ("train", "val"):
        for i in range(len(cached.datasets[split])):
            a, b = cached.datasets[split][i], fresh.datasets[split][i]
            assert torch.equal(a["image"], b["image"])
            assert torch.equal(a["mask"], b["mask"])
    img, label, _ = render_scene(0, "train", 4, (40, 56))
    scene = cached.datasets["train"].scene(4)
    assert np.array_equal(scene[0], img)
    assert np.array_equal(scene[1], label)
    # Another detail scale is another file, holding its own scenes.
    detailed = SyntheticSegmentation(
        num_train=5, num_val=3, num_test=2, image_size=(40, 56), detail_scale=3
    )
    detailed.setup("validate")
    assert len(list((tmp_path / "synthetic").glob("*-3-40x56-detail3.npy"))) == 1
    _, label3, _ = render_scene(0, "val", 1, (40, 56), detail_scale=3)
    assert np.array_equal(detailed.datasets["val"].scene(1)[1], label3)


def test_written_once_writes_a_file_once_and_whole(tmp_path):
    calls = []

    def write(tmp):
        calls.append(tmp)
        tmp.write_text("x")

    path = tmp_path / "a" / "f.txt"
    assert written_once(path, write) == path
    assert written_once(path, write) == path
    assert len(calls) == 1
    assert path.read_text() == "x"

    def fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        written_once(tmp_path / "g.txt", fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "g.txt.lock"]


def test_unaugmented_training_samples_are_read_without_seeding_the_generators(monkeypatch):
    from segbench.data.base import SeededSamples
    from segbench.data.transforms import Augment

    dm = SyntheticSegmentation(num_train=4, num_val=2, num_test=2, image_size=(32, 32))
    dm.setup("fit")
    loader = dm.train_dataloader()
    samples = loader.dataset
    assert isinstance(samples, SeededSamples)
    assert not samples.random
    import segbench.data.base as base

    def no_seeding(*args, **kwargs):
        raise AssertionError("seeded a sample whose transform draws nothing")

    monkeypatch.setattr(base.np.random, "SeedSequence", no_seeding)
    got = samples[(3, 1)]
    assert torch.equal(got["image"], dm.datasets["train"][3]["image"])
    flipped = SyntheticSegmentation(num_train=4, image_size=(32, 32), augment=Augment())
    flipped.setup("fit")
    assert flipped.train_dataloader().dataset.random


def test_scenes_rendered_by_several_processes_are_the_same_file(tmp_path):
    one = scene_cache(0, "val", 7, (40, 56), cache_dir=str(tmp_path / "one"), cue_gap=0.3)
    three = scene_cache(
        0, "val", 7, (40, 56), cache_dir=str(tmp_path / "three"), cue_gap=0.3, workers=3
    )
    assert one.name == three.name  # the number of processes does not key the cache
    assert one.read_bytes() == three.read_bytes()
    assert np.load(three)[..., :3].any(axis=(1, 2, 3)).all()  # every row was rendered


def test_render_workers_must_not_be_negative():
    with pytest.raises(ConfigError, match="render_workers"):
        SyntheticSegmentation(render_workers=-1)


def test_a_cache_folder_that_is_a_file_is_named(tmp_path, monkeypatch):
    from segbench.cache import cache_root

    monkeypatch.setenv("SEGBENCH_CACHE", str(tmp_path / "file"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"SEGBENCH_CACHE=.*file is a file, not a folder"):
        cache_root()


def test_the_cache_follows_xdg_cache_home(tmp_path, monkeypatch):
    """Without SEGBENCH_CACHE the cache goes where XDG_CACHE_HOME says (as W&B's, matplotlib's
    and torch's do), made if missing: a user whose home is not writable points them all there."""
    from segbench.cache import cache_root

    monkeypatch.delenv("SEGBENCH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "segbench"
    assert cache_root().is_dir()
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")  # ignored, as the XDG rule says
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "segbench"
