"""Image/mask pairs on disk, read and checked with errors that name the file at fault.

Images and masks are read with Pillow (torchvision 0.29 deprecates its own decoders). Images are
converted to RGB;
single-channel and palette ("P") PNGs hold class indices directly (CamVid, VOC, Cityscapes
trainIds); RGB masks are converted to indices through a colour palette. Raw mask values can be
remapped with a look-up table (e.g. CamVid's void 11 -> 255, Cityscapes' labelIds -> trainIds).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from segbench.errors import ConfigError, DataError, MissingFileError, UnreadableFileError

log = logging.getLogger("segbench")


def _as_displayed(im: Image.Image, path: Path) -> Image.Image:
    """The picture as a viewer shows it: turned by its EXIF orientation (a phone photo), and its
    first frame (an animated GIF or a multi-page TIFF, said in the log)."""
    frames = getattr(im, "n_frames", 1)
    if frames > 1:
        log.warning("%s has %d frames: the first is read", path, frames)
    return ImageOps.exif_transpose(im)


def _to_rgb(im: Image.Image) -> np.ndarray:
    """``H x W x 3`` uint8. 16-bit (and 32-bit integer) grey levels are scaled to 8 bits, not
    clipped at 255 as Pillow's own conversion does (a 16-bit PNG would read as pure white);
    palette, CMYK, grey and alpha images are converted by Pillow."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        grey = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return np.asarray(im.convert("RGB"))


@contextlib.contextmanager
def sized_by_caller() -> Iterator[None]:
    """Pillow's decompression-bomb limit lifted: for reading images whose size the caller has
    already judged (``segbench predict`` checks each header against ``--max_megapixels`` and
    tiles what is over it), so that Pillow does not refuse what segbench was asked to read."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def read_image(path: Path) -> torch.Tensor:
    """Decode an image file to ``uint8 3 x H x W`` RGB, as a viewer shows it (EXIF orientation,
    16-bit grey scaled to 8 bits, the first frame of an animation)."""
    try:
        with warnings.catch_warnings(), Image.open(path) as im:
            # Pillow's warning over ~89 MP: segbench predict states the sizes it takes itself.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            picture = image_tensor(im, str(path))
    except FileNotFoundError:
        raise MissingFileError(f"image not found: {path}") from None
    except Image.DecompressionBombError as err:
        raise UnreadableFileError(f"cannot read image {path}: {err}") from None
    except OSError as err:  # PIL.UnidentifiedImageError is an OSError
        raise UnreadableFileError(f"cannot read image {path}: {err}") from err
    return picture


def image_tensor(im: Image.Image, name: str = "the image") -> torch.Tensor:
    """A decoded picture as ``uint8 3 x H x W`` RGB, as a viewer shows it: what
    :func:`read_image` makes of a file, for a picture already open (the Python API)."""
    return torch.from_numpy(_to_rgb(_as_displayed(im, Path(name))).copy()).permute(2, 0, 1)


def prepare_image(original: torch.Tensor, transform: v2.Transform) -> torch.Tensor:
    """The network's input of an image read as ``uint8 3 x H x W``: the data module's
    evaluation ``transform`` (scale, normalisation), as a plain tensor."""
    return transform(tv_tensors.Image(original)).as_subclass(torch.Tensor)


def read_mask(path: Path, palette: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """Read a label map as ``int64 H x W``.

    ``palette`` (RGB per class) converts an RGB-coded mask to indices; a colour not in it is an
    error naming the file and the colour.
    """
    try:
        with Image.open(path) as opened:
            im = _as_displayed(opened, path)  # the same turn as its image's
            im.load()
            mode = im.mode
            arr = np.asarray(im.convert("RGB") if mode in ("RGB", "RGBA") else im)
    except FileNotFoundError:
        raise MissingFileError(f"mask not found: {path}") from None
    except Image.DecompressionBombError as err:
        raise UnreadableFileError(f"cannot read mask {path}: {err}") from None
    except OSError as err:
        raise UnreadableFileError(f"cannot read mask {path}: {err}") from err
    if arr.ndim == 2:
        return arr.astype(np.int64)
    if palette is None:
        raise DataError(
            f"{path} is an {mode} mask, but masks here hold class indices: store them in a "
            "single-channel or palette PNG (CamVid's SegNet layout and VOC do); only "
            "FolderSegmentation reads colour-coded masks, given its colours in "
            "data.init_args.palette (one RGB colour per class)"
        )
    code = (arr[..., 0].astype(np.int64) << 16) | (arr[..., 1].astype(np.int64) << 8) | arr[..., 2]
    keys = np.asarray([(r << 16) | (g << 8) | b for r, g, b in palette], np.int64)
    order = np.argsort(keys)
    pos = np.clip(np.searchsorted(keys[order], code), 0, len(keys) - 1)
    found = keys[order][pos] == code
    if not found.all():
        bad = np.unique(code[~found])[:5]
        colours = [((c >> 16) & 255, (c >> 8) & 255, c & 255) for c in bad.tolist()]
        raise DataError(f"{path}: colours {colours} are not in the palette")
    return order[pos]


def resolve_root(root: str | None, env_var: str, dataset: str) -> Path:
    """The data set's folder: ``root`` if given, else ``$env_var``; checked to be a directory.

    Data modules call this when a split is built, not in ``__init__``, so configs print and
    models build (``--print_config``, ``segbench summary``) on machines without the data.
    """
    value = root or os.environ.get(env_var)
    if not value:
        raise ConfigError(f"{dataset}: no root given; set data.init_args.root or ${env_var}")
    path = Path(value).expanduser()
    if not path.is_dir():
        raise MissingFileError(
            f"{dataset} root {path} is not a directory (set data.init_args.root or ${env_var})"
        )
    return path


def read_names(listing: Path, dataset: str) -> list[str]:
    """The names of a split list (one per line, blank lines skipped); errors name the file."""
    if not listing.is_file():
        raise MissingFileError(f"{dataset}: split list not found: {listing}")
    names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    if not names:
        raise DataError(f"{dataset}: {listing} lists no images")
    return names


def check_pairs(
    pairs: Iterable[tuple[Path, Path]], dataset: str, hint: str = ""
) -> list[tuple[Path, Path]]:
    """Check that every image and mask exists; the error names the first missing files.

    ``hint`` (e.g. the conversion command that writes the masks) is appended to the message.
    """
    pairs = list(pairs)
    missing = [p for pair in pairs for p in pair if not p.is_file()]
    if missing:
        shown = "\n  ".join(str(p) for p in missing[:5])
        more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise MissingFileError(
            f"{dataset}: {len(missing)} listed file(s) missing:\n  {shown}{more}"
            + (f"\n{hint}" if hint else "")
        )
    if not pairs:
        raise DataError(f"{dataset}: the split has no images")
    return pairs


class ImageMaskPairs(Dataset):
    """A list of ``(image, mask)`` files with checks on every sample.

    Args:
        pairs: the files, in order.
        num_classes: K; mask values must lie in ``[0, K)`` or equal ``ignore_index``.
        ignore_index: the void label after remapping.
        transform: a joint v2 transform applied to ``{"image", "mask"}``.
        label_map: raw mask value -> label, for values that change (e.g. ``{11: 255}``).
        palette: RGB colour per class, to read RGB-coded masks.
        cache_dir: keep each pair, decoded and checked, in this folder (one uncompressed
            ``.npz`` per pair, keyed by both files' paths, sizes and modification times and by
            the label mapping), and read it from there afterwards: decoding a PNG costs ~8 ms
            a CamVid frame on these CPUs, reading its decoded copy ~0.5 ms. ``None``: decode
            every time.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[Path, Path]],
        *,
        num_classes: int,
        ignore_index: int,
        transform: v2.Transform,
        label_map: dict[int, int] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.pairs = list(pairs)
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.transform, self.palette = transform, palette
        self.cache_dir = cache_dir
        self.lut: np.ndarray | None = None
        if label_map:
            size = max(256, max(label_map) + 1)
            self.lut = np.arange(size, dtype=np.int64)
            for raw, label in label_map.items():
                self.lut[raw] = label

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The checked ``(uint8 3 x H x W image, H x W mask)`` of one pair (from the cache
        folder when there is one)."""
        if self.cache_dir is None:
            return self.decode(index)
        file = self.cache_dir / f"{self.cache_key(index)}.npz"
        try:
            with np.load(file) as kept:
                image, mask = kept["image"], kept["mask"].astype(kept["dtype"].item())
            return torch.from_numpy(image), torch.from_numpy(mask)
        except FileNotFoundError:
            pass
        image, mask = self.decode(index)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        small = mask.numpy()
        if small.min(initial=0) >= 0 and small.max(initial=0) <= 255:
            small = small.astype(np.uint8)
        tmp = file.with_name(f"{file.stem}.tmp{os.getpid()}.npz")
        try:  # whole or not at all; concurrent writers write the same bytes
            np.savez(tmp, image=image.numpy(), mask=small, dtype=np.array(str(mask.numpy().dtype)))
            os.replace(tmp, file)
        finally:
            tmp.unlink(missing_ok=True)
        return image, mask

    def cache_key(self, index: int) -> str:
        """The name of pair ``index``'s decoded copy: changes when either file or the label
        mapping does."""
        h = hashlib.sha256(b"segbench-decoded-1")
        for path in self.pairs[index]:
            st = Path(path).stat()
            h.update(f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
        h.update(repr((self.num_classes, self.ignore_index, self.palette)).encode())
        if self.lut is not None:
            h.update(self.lut.tobytes())
        return h.hexdigest()[:32]

    def decode(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The checked ``(uint8 3 x H x W image, H x W mask)`` of one pair, read from its files."""
        img_path, mask_path = self.pairs[index]
        image = read_image(img_path)
        mask = read_mask(mask_path, self.palette)
        if tuple(image.shape[-2:]) != mask.shape:
            raise DataError(
                f"{img_path} is {tuple(image.shape[-2:])} (H, W) but its mask "
                f"{mask_path} is {mask.shape}"
            )
        if self.lut is not None:
            if mask.max() >= len(self.lut):
                raise DataError(f"{mask_path}: value {mask.max()} beyond the label map")
            mask = self.lut[mask]
        bad = (mask >= self.num_classes) & (mask != self.ignore_index) | (mask < 0)
        if bad.any():
            values = np.unique(mask[bad])[:8].tolist()
            raise DataError(
                f"{mask_path}: label values {values} are outside [0, "
                f"{self.num_classes}) and are not ignore_index={self.ignore_index}"
            )
        return image, torch.from_numpy(mask)

    def __getitem__(self, index: int) -> dict[str, object]:
        image, mask = self.load(index)
        sample = self.transform({"image": tv_tensors.Image(image), "mask": tv_tensors.Mask(mask)})
        return {
            "image": sample["image"].as_subclass(torch.Tensor),
            "mask": sample["mask"].as_subclass(torch.Tensor),
            "name": self.pairs[index][0].stem,
        }


#: The file types ``segbench predict --images`` reads (case-insensitive).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def find_images(patterns: Sequence[str]) -> list[Path]:
    """The image files named by ``patterns``: files, folders (their images, recursively) or globs
    (``"photos/*.jpg"``, ``"**/*.png"``), in order, without repeats.

    A path that does not exist, a glob that matches nothing and a folder without images are errors
    naming the pattern (a typo never yields a silently empty prediction).
    """
    import glob

    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if glob.has_magic(pattern) and "**" in pattern:
            files = [p for p in _walk(_static_root(path)) if _glob_regex(path).fullmatch(str(p))]
            files = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
            if not files:
                raise MissingFileError(
                    f"--images {pattern}: no image file matches ({', '.join(IMAGE_SUFFIXES)})"
                )
        elif glob.has_magic(pattern):  # one level per component: no recursion, no loop
            matches = [Path(p) for p in sorted(glob.glob(str(path)))]
            files = [p for p in matches if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
            if not files:
                raise MissingFileError(
                    f"--images {pattern}: no image file matches ({', '.join(IMAGE_SUFFIXES)})"
                )
        elif path.is_dir():
            files = [p for p in _walk(path) if p.suffix.lower() in IMAGE_SUFFIXES]
            if not files:
                raise MissingFileError(
                    f"--images {pattern}: the folder holds no image file "
                    f"({', '.join(IMAGE_SUFFIXES)})"
                )
        elif path.is_file():
            files = [path]
        else:
            raise MissingFileError(f"--images {pattern}: no such file or folder")
        found += files
    unique: dict[Path, Path] = {}  # the same file named twice (a link, ./x, x) is read once
    for p in found:
        unique.setdefault(p.resolve(), p)
    return list(unique.values())


def _walk(root: Path) -> list[Path]:
    """The files under ``root``, sorted, following links to folders but each real folder once
    (a link to a folder above it would otherwise loop for ever)."""
    seen: set[tuple[int, int]] = set()
    files: list[Path] = []
    for folder, dirs, names in os.walk(root, followlinks=True):
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()
        files += [Path(folder) / n for n in names if (Path(folder) / n).is_file()]
    return sorted(files)


def _static_root(pattern: Path) -> Path:
    """The folder part of a glob before its first wildcard (``photos/2024/**/*.jpg`` ->
    ``photos/2024``)."""
    import glob

    parts = pattern.parts
    first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    return Path(*parts[:first]) if first else Path(".")


def _glob_regex(pattern: Path) -> re.Pattern[str]:
    """A regex for a glob with ``**`` over paths as :func:`_walk` gives them: ``**/`` is zero
    or more folders, ``*`` and ``?`` stay within one path component, ``[...]`` is a class."""
    import fnmatch

    text = str(pattern)
    out, i = "", 0
    while i < len(text):
        if text.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif text.startswith("**", i):
            out, i = out + ".*", i + 2
        elif text[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif text[i] == "?":
            out, i = out + "[^/]", i + 1
        elif text[i] == "[" and "]" in text[i + 1 :]:
            end = text.index("]", i + 1)
            out, i = out + fnmatch.translate(text[i : end + 1])[4:-3], end + 1
        else:
            out, i = out + re.escape(text[i]), i + 1
    return re.compile(out)


#: What ``segbench predict`` appends to an image's output name for each file it may write (the
#: label map, the overlay, the probabilities), extension included.
OUTPUT_SUFFIXES = (".png", "_overlay.png", "_probs.npy")


def output_names(paths: Sequence[Path]) -> list[str]:
    """A distinct output name per image: its stem, or where stems repeat (``a/x.png``,
    ``b/x.jpg``) its path's parts joined with ``_`` (``a_x``, ``b_x``).

    Distinct as the files ``segbench predict`` writes from them (``<name>.png``,
    ``<name>_overlay.png``, :data:`OUTPUT_SUFFIXES`), not only as names: ``x.png`` and
    ``x_overlay.png`` in one folder would write the label map of the second over the overlay of
    the first, so the name that is another's overlay takes its extension (``x_overlay_png``)."""
    names = _distinct_stems(paths)
    overlays = {f"{n}_overlay" for n in names}
    names = [f"{n}_{p.suffix.lower().lstrip('.')}" if n in overlays else n
             for n, p in zip(names, paths, strict=True)]  # fmt: skip
    files = [n + suffix for n in names for suffix in OUTPUT_SUFFIXES]
    if len(set(files)) < len(files):  # names made to meet the renamed ones: numbered, distinct
        names = [f"{n}_{i}" for i, n in enumerate(names)]
    return names


def _distinct_stems(paths: Sequence[Path]) -> list[str]:
    """Each image's stem, or, where stems repeat, its path below the common folder."""
    stems = [p.stem for p in paths]
    repeated = {s for s in stems if stems.count(s) > 1}
    if not repeated:
        return stems
    root = Path(os.path.commonpath([p.resolve().parent for p in paths]))
    names = []
    for p, stem in zip(paths, stems, strict=True):
        if stem in repeated:
            parts = p.resolve().relative_to(root).with_suffix("").parts
            names.append("_".join(parts))
        else:
            names.append(stem)
    # x.png and x.jpg in one folder: each takes its suffix (x_png, x_jpg), not only the second.
    clash = {n for n in names if names.count(n) > 1}
    return [f"{n}_{p.suffix.lower().lstrip('.')}" if n in clash else n
            for n, p in zip(names, paths, strict=True)]  # fmt: skip


def image_size(path: Path) -> tuple[int, int] | str:
    """``(H, W)`` from the file's header (nothing decoded), or why it cannot be read."""
    try:
        with sized_by_caller(), Image.open(path) as im:  # the caller judges the size
            return im.height, im.width
    except (OSError, Image.DecompressionBombError) as err:  # Unidentified...: an OSError
        return f"cannot read it ({type(err).__name__}: {err})"


class ImageFiles(Dataset):
    """Images without labels, for prediction: each sample is the normalised ``image`` (through
    ``transform``), the ``original`` (uint8 ``3 x H x W``, as read), its ``name`` and ``path``.

    A file that cannot be decoded gives ``{"name", "path", "error"}`` instead of failing the
    whole prediction (:func:`collate_images` sets it aside).
    """

    def __init__(self, paths: Sequence[Path], *, transform: v2.Transform) -> None:
        self.paths = list(paths)
        self.names = output_names(self.paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, object]:
        path, name = self.paths[index], self.names[index]
        try:
            with sized_by_caller():  # ImageBatches checked each header against the limit
                original = read_image(path)
        except OSError as err:
            return {"name": name, "path": str(path), "error": str(err)}
        return {
            "image": prepare_image(original, self.transform),
            "original": original,
            "name": name,
            "path": str(path),
        }


def collate_images(samples: list[dict[str, object]]) -> dict[str, object]:
    """A batch of :class:`ImageFiles` samples (one size): the readable ones stacked, the others
    listed under ``"errors"`` as ``(path, message)``; ``"image"`` is ``None`` if none could be
    read."""
    good = [s for s in samples if "error" not in s]
    batch: dict[str, object] = {
        "errors": [(s["path"], s["error"]) for s in samples if "error" in s],
        "name": [s["name"] for s in good],
        "path": [s["path"] for s in good],
        "image": torch.stack([s["image"] for s in good]) if good else None,  # type: ignore[misc]
        "original": torch.stack([s["original"] for s in good]) if good else None,  # type: ignore[misc]
    }
    return batch


def batches_by_size(sizes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of at most ``batch_size`` images of one size (sizes in order
    of first appearance, images in their order)."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, size in enumerate(sizes):
        groups.setdefault(tuple(size), []).append(i)  # type: ignore[arg-type]
    return [
        group[i : i + batch_size]
        for group in groups.values()
        for i in range(0, len(group), batch_size)
    ]
