"""The base DataModule: class names, palette and void label in one place; loaders; DDP-exact eval.

A data set declares its classes once (``class_names``, ``ignore_index``); the CLI links them into
the task and the network, so nothing else repeats them. Every data module yields batches
``{"image": float N x 3 x H x W (normalised), "mask": int64 N x H x W, "name": list[str]}``.

Exact metrics under DDP: for training Lightning wraps the data in a ``DistributedSampler``, which
pads the split with repeated samples so every process gets the same number. For validation and
test that would count some images twice, so the evaluation loaders here carry Lightning's
``UnrepeatedDistributedSampler`` themselves (Lightning leaves a loader that already has a
distributed sampler alone): each image is seen by exactly one process, processes may differ by
one batch, and the metric states are summed across processes by torchmetrics.

Exact resume: the training order is a permutation drawn from ``(seed, epoch)`` and split across
processes (:class:`EpochSampler`), and each training sample's augmentation draws from generators
seeded by ``(seed, epoch, index)`` (:class:`SeededSamples`): the data of every step is a pure
function of the seed and the step, whatever the number of loader workers. The training loader
(:class:`ResumableLoader`) tells Lightning where an epoch stood when a checkpoint was written and
skips the batches already trained on when the run resumes from it, mid-epoch included. No loader
draws from the global random generators (each has its own), so resuming does not shift the
random numbers the training step draws.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate
from torchvision.transforms import v2

from segbench.cache import cache_root
from segbench.data.files import ImageFiles, batches_by_size, collate_images, find_images, image_size
from segbench.data.transforms import Augment, eval_transform, train_transform
from segbench.errors import ConfigError, SegbenchError

Split = Literal["train", "val", "test"]

log = logging.getLogger("segbench")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_palette(n: int) -> list[tuple[int, int, int]]:
    """The PASCAL VOC colour map (bit-interleaved), for data sets without a palette of their own."""
    palette = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append((r, g, b))
    return palette


def collate(samples: list[dict[str, object]]) -> dict[str, object]:
    """``default_collate``, with a clear message when the images of a batch differ in size."""
    try:
        return default_collate(samples)
    except RuntimeError as err:
        sizes = sorted({tuple(s["image"].shape[-2:]) for s in samples})  # type: ignore[attr-defined]
        if len(sizes) < 2:
            raise
        names = [s.get("name") for s in samples]
        raise ConfigError(  # a user's setting, not a bug: no traceback
            f"images {names} have different sizes {sizes} and cannot be stacked into one batch: "
            "evaluate whole images one at a time (data.init_args.val_batch_size 1); for "
            "training, crop them to one size (data.init_args.augment.crop_size) or use "
            "data.init_args.batch_size 1"
        ) from err


def _mask_of(sample: Any) -> torch.Tensor:  # batch_size=None: one sample, not a list
    return sample["mask"]


def global_seed() -> int:
    """The run's seed (``seed_everything``), which the data order and augmentation derive from."""
    return int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))


class EpochSampler(DistributedSampler):
    """The training order: a permutation per epoch from ``(seed, epoch)``, split by process.

    ``DistributedSampler``'s order (so Lightning keeps it under DDP and calls ``set_epoch``);
    it yields ``(index, epoch)`` pairs for :class:`SeededSamples`, and starts ``skip`` samples
    into the epoch once after a mid-epoch resume. Its length stays the whole epoch's: Lightning
    counts the batches already done.
    """

    def __init__(self, dataset: Dataset, *, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.skip = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0
        epoch = self.epoch
        return iter([(i, epoch) for i in indices[skip:]])


class SeededSamples(Dataset):
    """``dataset[index]`` with torch's, NumPy's and Python's generators seeded by
    ``(seed, epoch, index)``: each sample's augmentation is the same in every run, process and
    worker layout. The generators of the calling process are restored afterwards.

    ``random=False`` (a training transform that draws nothing, e.g. the synthetic scenes'
    plain normalisation) reads ``dataset[index]`` as it is: saving, seeding and restoring three
    generators costs about as much as reading a cached 128 x 128 scene."""

    def __init__(self, dataset: Dataset, seed: int, *, random: bool = True) -> None:
        self.dataset, self.seed, self.random = dataset, seed, random

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, epoch = key
        if not self.random:
            return self.dataset[index]
        seed = np.random.SeedSequence([self.seed, epoch, index]).generate_state(2)
        cpu = torch.default_generator  # torch.manual_seed would also walk the accelerators' RNGs
        saved = cpu.get_state(), np.random.get_state(), random.getstate()
        cpu.manual_seed(int(seed[0]) << 32 | int(seed[1]))
        np.random.seed(int(seed[0]))
        random.seed(int(seed[1]))
        try:
            return self.dataset[index]
        finally:
            cpu.set_state(saved[0])
            np.random.set_state(saved[1])
            random.setstate(saved[2])


class ResumableLoader(DataLoader):
    """The training loader: Lightning stores :meth:`state_dict` in every checkpoint and hands
    it back through :meth:`load_state_dict` before the resumed epoch's batches are drawn.

    ``progress()`` returns ``(epoch, batches done in it, epoch finished)`` from the trainer.
    """

    def __init__(self, *args: Any, progress: Callable[[], tuple[int, int, bool]], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.progress = progress

    def state_dict(self) -> dict[str, Any]:
        epoch, batches, finished = self.progress()
        return {"epoch": epoch, "batches": batches, "epoch_finished": finished}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        sampler = self.sampler
        assert isinstance(sampler, EpochSampler)
        if state["epoch_finished"]:
            sampler.set_epoch(state["epoch"] + 1)
        else:
            sampler.set_epoch(state["epoch"])
            sampler.skip = state["batches"] * int(self.batch_size or 1)


def two_digits(x: float) -> str:
    """``x`` to two significant digits, without an exponent for a size a message shows
    (``0.21``, ``6.3``, ``160``): ``:.0f`` said a 1.35 MP image "would hold ~0 GB"."""
    return f"{float(f'{x:.2g}'):g}"


class SegmentationDataModule(L.LightningDataModule):
    """Base class: subclasses set the class list and implement :meth:`build_dataset`.

    Args:
        batch_size: training batch size per process.
        val_batch_size: evaluation batch size per process (default: ``batch_size``).
        num_workers: loader worker processes per split (0: load in the main process).
        augment: training augmentation (``None``: none, only normalisation).
        cache: keep what is costly to produce per sample (decoded files, rendered scenes) in
            the cache folder (``$SEGBENCH_CACHE``, default ``$XDG_CACHE_HOME/segbench`` or
            ``~/.cache/segbench``).
    """

    #: Names of the K classes, in label order.
    class_names: tuple[str, ...] = ()
    #: RGB colour per class, for overlays and palette PNGs.
    palette: tuple[tuple[int, int, int], ...] = ()
    #: Label of void pixels in the masks this module yields.
    ignore_index: int = 255
    #: Normalisation of the RGB images (0..1 scale).
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __init__(
        self,
        *,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        augment: Augment | None = None,
        cache: bool = False,
    ) -> None:
        super().__init__()
        for key, value in (("batch_size", batch_size), ("val_batch_size", val_batch_size)):
            if value is not None and value < 1:
                raise ConfigError(f"data.init_args.{key} must be at least 1, got {value}")
        if num_workers < 0:
            raise ConfigError(f"data.init_args.num_workers must be 0 or more, got {num_workers}")
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.augment = augment
        self.cache = cache
        #: Every split is resized by this factor first (a subclass's ``scale`` argument).
        self.scale = 1.0
        self.datasets: dict[str, Dataset] = {}
        #: ``segbench predict --images``: the files to predict instead of the test split.
        self.predict_images: list[str] | None = None
        #: ``segbench predict --max_megapixels`` (in pixels): larger images are skipped, or
        #: predicted in tiles of ``predict_tile`` pixels a side (``--tile``).
        self.predict_max_pixels: float | None = None
        self.predict_tile: int | None = None
        #: ``(path, why)`` of the files of ``predict_images`` that could not be read.
        self.skipped_images: list[tuple[str, str]] = []

    def decoded_cache(self) -> Path | None:
        """The folder of decoded image/mask pairs (``cache: true``), else ``None``."""
        return cache_root() / "decoded" if self.cache else None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def colours(self) -> list[tuple[int, int, int]]:
        """The palette, completed with the VOC colour map if the data set has none."""
        return (
            list(self.palette)
            if len(self.palette) >= self.num_classes
            else default_palette(self.num_classes)
        )

    def median_frequency_weights(self, max_images: int = 500) -> list[float]:
        """Class weights by median frequency balancing (Eigen & Fergus, ICCV 2015; SegNet).

        ``freq(c)`` = pixels of class c / pixels of the training images that contain c, over the
        first ``max_images`` training images (no augmentation); the weight of c is
        ``median(freq) / freq(c)``, and 1 for a class that never occurs.
        """
        dataset = self.unaugmented("train")
        k = self.num_classes
        pixels = torch.zeros(k, dtype=torch.float64)
        image_pixels = torch.zeros(k, dtype=torch.float64)
        for i in range(min(max_images, len(dataset))):  # type: ignore[arg-type]
            mask = dataset[i]["mask"]
            counts = torch.bincount(mask[mask != self.ignore_index].flatten(), minlength=k)[:k]
            pixels += counts
            image_pixels += (counts > 0) * counts.sum()
        present = image_pixels > 0
        freq = pixels[present] / image_pixels[present]
        weights = torch.ones(k, dtype=torch.float64)
        weights[present] = freq.median() / freq
        return weights.tolist()

    # -- the labels of a split, for data-dependent initialisations (DUpsample's basis) -----------
    def unaugmented(self, split: Split) -> Dataset:
        """The data set of ``split`` without augmentation (normalised, at the module's scale)."""
        return self.build_dataset(
            split, eval_transform(mean=self.mean, std=self.std, scale=self.scale)
        )

    def label_maps(self, split: Split = "train") -> Iterator[torch.Tensor]:
        """The ``H x W`` label maps of ``split`` without augmentation, read by this module's
        loader workers."""
        loader = DataLoader(
            self.unaugmented(split),
            batch_size=None,
            num_workers=self.num_workers,
            collate_fn=_mask_of,
        )
        yield from loader

    def label_fingerprint(self, split: Split = "train") -> str:
        """A stable key of the labels of ``split``, cheap to compute (for caches).

        Hashes the data module's class, number of classes, void label, scale and split length, the
        label file names where the data set lists files (``pairs``, not their directory, so a copy
        of the data elsewhere shares the key), and the content of three label maps (first, middle,
        last): a different seed, image size or file list gives a different key.
        """
        dataset = self.unaugmented(split)
        h = hashlib.sha256()
        cls = type(self)
        n = len(dataset)  # type: ignore[arg-type]
        h.update(f"{cls.__module__}.{cls.__qualname__}".encode())
        h.update(repr((self.num_classes, self.ignore_index, self.scale, n)).encode())
        for pair in getattr(dataset, "pairs", ()):
            h.update(Path(pair[-1]).name.encode())
        for i in sorted({0, n // 2, max(0, n - 1)}):
            mask = dataset[i]["mask"]
            h.update(repr(tuple(mask.shape)).encode())
            h.update(mask.cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def build_dataset(self, split: Split, transform: v2.Transform) -> Dataset:
        """Return the data set of ``split`` whose samples go through ``transform``."""
        raise NotImplementedError

    def _build(self, split: Split) -> None:
        if split in self.datasets:
            return
        if split == "train" and self.augment is not None:
            tf = train_transform(
                self.augment,
                mean=self.mean,
                std=self.std,
                ignore_index=self.ignore_index,
                scale=self.scale,
            )
        else:
            tf = eval_transform(mean=self.mean, std=self.std, scale=self.scale)
        self.datasets[split] = self.build_dataset(split, tf)

    def setup(self, stage: str) -> None:
        splits: dict[str, tuple[Split, ...]] = {
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": ("test",),
            "predict": ("test",),
        }
        if stage == "predict" and self.predict_images is not None:
            self.datasets["images"] = self._image_batches(self.predict_images)
            return
        for split in splits[stage]:
            self._build(split)

    def _image_batches(self, patterns: list[str]) -> ImageBatches:
        """The files of ``patterns`` as batches of one size each; files whose header cannot be
        read, or whose size is over the limit, are reported and skipped (all of them skipped is
        an error)."""
        paths: list[Path] = []
        sizes: list[tuple[int, int]] = []
        for path in find_images(patterns):
            size = image_size(path)
            why_not = size if isinstance(size, str) else self._too_large(path, *size)
            if why_not is not None:
                log.warning("skipped %s: %s", path, why_not)
                self.skipped_images.append((str(path), why_not))
            elif not isinstance(size, str):
                paths.append(path)
                sizes.append(size)
        if not paths:
            raise SegbenchError(
                f"--images {' '.join(patterns)}: nothing to predict: every image was skipped, "
                "each named above with why"
            )
        files = ImageFiles(
            paths, transform=eval_transform(mean=self.mean, std=self.std, scale=self.scale)
        )
        return ImageBatches(files, batches_by_size(sizes, self.val_batch_size))

    def _too_large(self, path: Path, height: int, width: int) -> str | None:
        """Why an image of this size is not predicted (over ``--max_megapixels`` without
        ``--tile``), or ``None``: it is (in tiles when over the limit, said in the log)."""
        limit, pixels = self.predict_max_pixels, height * width
        if limit is None or pixels <= limit:
            return None
        if self.predict_tile:
            log.info(
                "%s: %d x %d = %.3g MP, over --max_megapixels %g: predicted in tiles of %d",
                path, width, height, pixels / 1e6, limit / 1e6, self.predict_tile,
            )  # fmt: skip
            return None
        gigabytes = two_digits(pixels * 170 / 2**30)
        return (
            f"{width} x {height} = {pixels / 1e6:.3g} MP is over --max_megapixels "
            f"{limit / 1e6:g}: predicting it whole would hold ~{gigabytes} GB; "
            "predict it in tiles (--tile 1024: ~40 bytes a pixel), or raise --max_megapixels "
            "where the memory is there"
        )

    def _loader(self, split: Split, *, train: bool) -> DataLoader:
        dataset = self.datasets[split]
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        seed = global_seed()
        common: dict[str, Any] = {
            "num_workers": self.num_workers,
            "collate_fn": collate,
            "persistent_workers": self.num_workers > 0,
            "pin_memory": trainer is not None
            and trainer.accelerator.__class__.__name__ == "CUDAAccelerator",
            # Its own generator: creating an iterator draws nothing from the global one.
            "generator": torch.Generator().manual_seed(seed),
        }
        if train:
            return ResumableLoader(
                SeededSamples(
                    dataset, seed, random=self.augment is not None and self.augment.random
                ),
                batch_size=self.batch_size,
                sampler=EpochSampler(dataset, num_replicas=world, rank=rank, seed=seed),
                drop_last=len(dataset) >= self.batch_size,  # type: ignore[arg-type]
                progress=self._progress,
                **common,
            )
        sampler = None
        if world > 1:
            sampler = UnrepeatedDistributedSampler(
                dataset, num_replicas=world, rank=rank, shuffle=False
            )
        return DataLoader(dataset, batch_size=self.val_batch_size, sampler=sampler, **common)

    def _progress(self) -> tuple[int, int, bool]:
        trainer = self.trainer
        if trainer is None:
            return 0, 0, False
        # A _ProcessedTracker at run time; Lightning annotates the field as its base class.
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed  # type: ignore[attr-defined]
        return trainer.current_epoch, done, done >= trainer.num_training_batches

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader:
        if "images" not in self.datasets:
            return self._loader("test", train=False)
        # Each item is a whole batch (images of one size), so Lightning's distributed sampler
        # (if any) shares batches among the processes.
        return DataLoader(
            self.datasets["images"],
            batch_size=None,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(0),
        )


class ImageBatches(Dataset):
    """:class:`ImageFiles` read as the given batches of indices (``collate_images`` each)."""

    def __init__(self, files: ImageFiles, batches: list[list[int]]) -> None:
        self.files, self.batches = files, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict[str, object]:
        return collate_images([self.files[i] for i in self.batches[index]])


def check_class_names(names: Sequence[str], num_classes: int, where: str) -> tuple[str, ...]:
    """Validate user-given class names against the number of classes."""
    if len(names) != num_classes:
        raise ConfigError(f"{where}: {len(names)} class names for num_classes={num_classes}")
    return tuple(names)
