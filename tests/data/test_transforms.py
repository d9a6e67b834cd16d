"""Joint transforms keep image and mask aligned; padding is void."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from segbench.data.transforms import Augment, eval_transform, train_transform
from segbench.errors import ConfigError

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def coded_sample(h: int = 40, w: int = 60) -> dict[str, torch.Tensor]:
    """An image whose red channel encodes the mask's label: alignment is checkable per pixel."""
    mask = torch.arange(h * w).reshape(h, w) % 7
    image = torch.stack([mask * 30, mask * 0, mask * 0]).to(torch.uint8)
    return {"image": tv_tensors.Image(image), "mask": tv_tensors.Mask(mask)}


def decode(image: torch.Tensor) -> torch.Tensor:
    red = image[0] * STD[0] + MEAN[0]
    return (red * 255 / 30).round().long()


def test_crop_and_flip_keep_image_and_mask_aligned():
    torch.manual_seed(0)
    tf = train_transform(
        Augment(crop_size=(32, 32), flip=True), mean=MEAN, std=STD, ignore_index=255
    )
    for _ in range(10):
        out = tf(coded_sample())
        assert out["image"].shape == (3, 32, 32)
        assert out["mask"].shape == (32, 32)
        assert torch.equal(decode(out["image"]), out["mask"])


def test_crop_larger_than_the_image_pads_the_mask_with_void():
    tf = train_transform(
        Augment(crop_size=(64, 80), flip=False), mean=MEAN, std=STD, ignore_index=255
    )
    out = tf(coded_sample(40, 60))
    void = out["mask"] == 255
    assert void.sum() == 64 * 80 - 40 * 60
    # The image is padded with the mean colour: zero after normalisation.
    assert torch.allclose(out["image"][:, void], torch.zeros(1), atol=1 / 255 / STD[0])


def test_random_scale_resizes_masks_with_nearest_labels():
    torch.manual_seed(1)
    tf = train_transform(
        Augment(scale_range=(0.5, 2.0), flip=False), mean=MEAN, std=STD, ignore_index=255
    )
    for _ in range(5):
        out = tf(coded_sample())
        h, w = out["mask"].shape
        assert abs(h / 40 - w / 60) < 0.05  # aspect ratio kept
        assert set(out["mask"].unique().tolist()) <= set(range(7))  # no interpolated labels


def test_rotation_fills_the_corners_with_void():
    torch.manual_seed(2)
    tf = train_transform(Augment(rotation=30.0, flip=False), mean=MEAN, std=STD, ignore_index=255)
    out = tf(coded_sample())
    assert (out["mask"] == 255).any()
    assert set(out["mask"].unique().tolist()) <= set(range(7)) | {255}


def test_fixed_rescale_applies_to_evaluation_too():
    from segbench.data.transforms import eval_transform

    out = eval_transform(mean=MEAN, std=STD, scale=0.5)(coded_sample(40, 60))
    assert out["image"].shape == (3, 20, 30)
    assert out["mask"].shape == (20, 30)
    assert set(out["mask"].unique().tolist()) <= set(range(7))


def test_normalise_equals_todtype_then_normalize_exactly():
    from torchvision.transforms import v2

    from segbench.data.transforms import Normalise

    generic = v2.Compose([
        v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64,
                    "others": None}, scale=True),
        v2.Normalize(mean=list(MEAN), std=list(STD)),
    ])  # fmt: skip
    sample = {**coded_sample(), "name": "x"}
    sample["mask"] = tv_tensors.Mask(sample["mask"].to(torch.uint8))
    want, got = generic(dict(sample)), Normalise(MEAN, STD)(dict(sample))
    assert torch.equal(got["image"], want["image"])
    assert got["image"].dtype == torch.float32
    assert torch.equal(got["mask"], want["mask"])
    assert got["mask"].dtype == torch.int64
    assert isinstance(got["image"], tv_tensors.Image)
    assert isinstance(got["mask"], tv_tensors.Mask)
    assert got["name"] == "x"


def test_augment_is_random_unless_every_step_is_off():
    assert not Augment(flip=False).random
    assert Augment().random  # flip
    assert Augment(flip=False, crop_size=(8, 8)).random
    assert Augment(flip=False, scale_range=(0.5, 2.0)).random
    assert Augment(flip=False, rotation=10).random
    assert Augment(flip=False, color_jitter=(0.2, 0.0, 0.0, 0.0)).random
    assert Augment(flip=False, blur=1.5).random


def test_photometric_jitter_and_blur_change_the_image_not_the_mask():
    torch.manual_seed(0)
    augment = Augment(flip=False, color_jitter=(0.4, 0.4, 0.4, 0.1), blur=2.0)
    tf = train_transform(augment, mean=MEAN, std=STD, ignore_index=255)
    plain = train_transform(Augment(flip=False), mean=MEAN, std=STD, ignore_index=255)
    sample = coded_sample()
    reference = plain(sample)
    changed = 0
    for _ in range(10):
        out = tf(coded_sample())
        assert torch.equal(out["mask"], reference["mask"])  # labels untouched
        assert out["image"].shape == reference["image"].shape
        changed += not torch.allclose(out["image"], reference["image"])
    assert changed == 10  # the jitter alone changes every draw
    torch.manual_seed(1)
    first = tf(coded_sample())["image"]
    torch.manual_seed(1)
    assert torch.equal(tf(coded_sample())["image"], first)  # a function of the generator


def test_a_scale_that_cannot_resize_is_refused_naming_its_key():
    with pytest.raises(ConfigError, match=r"data.init_args.scale must be positive, got -0.5"):
        eval_transform(mean=(0.5,) * 3, std=(0.5,) * 3, scale=-0.5)
    with pytest.raises(ConfigError, match=r"augment.scale_range must satisfy 0 < low <= high"):
        Augment(scale_range=(1.5, 0.5))
