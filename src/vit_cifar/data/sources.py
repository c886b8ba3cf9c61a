"""Where images come from: torchvision's CIFAR, an image-folder tree or archive, or synthetic images. Every
source yields uint8 arrays decoded once (:class:`ImageArrays`); image folders and archives are decoded on first
use into an ``.npz`` cache, so later runs and epochs never decode a file again."""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vit_cifar.errors import DataError, first_line

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
SPLITS = ("train", "test")
ARRAY_KEYS = ("train_x", "train_y", "test_x", "test_y")  # the arrays of ImageArrays, in the decode cache
# No image file of a dataset is read past this size (an archive member declares its size before it is read):
# memory stays bounded whatever an archive holds. CIFAR's files are about 2 KB; a 24-megapixel photo is ~10 MB.
MAX_IMAGE_FILE_BYTES = 64 * 2**20
TORCHVISION_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
SKIP_HINT = ", or set data.skip_bad=true to leave out unreadable files"
log = logging.getLogger(__name__)


@dataclass
class ImageArrays:
    """Decoded images (N, H, W, 3) uint8 and int64 labels for the train and test splits."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]
    description: str
    skipped: list[str] = field(default_factory=list)  # unreadable files left out (image folders, skip_bad)


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def is_image_folder(path: Path) -> bool:
    return path.is_dir() and all((path / split).is_dir() for split in SPLITS)


def resolve_source(source: str, root: Path) -> str:
    """Pick ``folder`` or ``torchvision`` from what ``root`` holds when ``source`` is ``auto``."""
    if source != "auto":
        return source
    if is_archive(root) or is_image_folder(root):
        return "folder"
    if root.name.lower().endswith(ARCHIVE_SUFFIXES) and not root.exists():
        raise DataError(f"data.root={root}: no such file: check the path to the archive")
    present = [split for split in SPLITS if (root / split).is_dir()]
    if present:  # half an image folder: say what is missing rather than take it for torchvision's folder
        [missing] = set(SPLITS) - set(present)
        raise DataError(
            f"data.root={root} has {present[0]}/ but no {missing}/: an image folder needs both "
            "train/<class>/* and test/<class>/*"
        )
    if root.is_file():
        raise DataError(
            f"data.root={root} is a file but not a .tar/.tar.gz/.tgz archive: "
            "point it at an image-folder archive, an image-folder tree or a torchvision data folder"
        )
    return "torchvision"


def torchvision_split(root: Path, dataset: str, train: bool, download: bool = False):
    """One split of torchvision's copy in ``root``; with ``download``, fetched when missing or damaged
    (torchvision checks the files)."""
    from torchvision import datasets

    if dataset not in TORCHVISION_FOLDERS:
        raise DataError(f"data.dataset={dataset} is not a torchvision dataset here: use cifar10 or cifar100")
    cls = datasets.CIFAR10 if dataset == "cifar10" else datasets.CIFAR100
    try:
        return cls(str(root), train=train, download=download)
    except Exception as err:  # not found or corrupt, or URLError, socket and HTTP errors: all one to the user
        why = f"could not be downloaded ({first_line(err)})" if download else "data.download=false"
        raise DataError(
            f"{dataset} is not in {root} and {why}: point data.root at a local copy: a folder holding "
            f"{TORCHVISION_FOLDERS[dataset]}, an image-folder tree train/<class>/*, test/<class>/*, or a "
            ".tar/.tar.gz of one (e.g. data.root=/path/to/cifar10-jpeg.tar.gz)"
        ) from err


def load_torchvision(root: Path, dataset: str) -> ImageArrays:
    def arrays(split) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(split.data, dtype=np.uint8), np.asarray(split.targets, dtype=np.int64)

    train, test = torchvision_split(root, dataset, train=True), torchvision_split(root, dataset, train=False)
    return ImageArrays(*arrays(train), *arrays(test), list(train.classes), f"torchvision {dataset} ({root})")


def _split_class_of(relative: str) -> tuple[str, str] | None:
    """``.../train/<class>/<file>`` -> ("train", "<class>"), else None (hidden files, files outside classes).
    Every other file in a class folder is meant to be an image: one that does not decode is reported."""
    parts = Path(relative).parts
    if len(parts) < 3 or parts[-3] not in SPLITS or parts[-1].startswith("."):
        return None
    return parts[-3], parts[-2]


def collect_image_files(inputs: str | Path | list | tuple) -> tuple[list[Path], list[tuple[str, str]]]:
    """The image files that ``inputs`` names, for ``predict`` and ``visualize``: a file as named, a folder's
    image files (by extension, recursively, sorted); and for each name that gives none, (name, why)."""
    kinds = "/".join(sorted(IMAGE_EXTENSIONS))
    files, problems = [], []
    for item in [inputs] if isinstance(inputs, str | Path) else list(inputs):
        path = Path(os.path.expanduser(str(item)))
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            files += found
            if not found:
                problems.append((str(path), f"the folder holds no {kinds} images"))
        elif path.is_file():
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                files.append(path)
            else:
                problems.append((str(path), f"{path.name} is not a {kinds} image"))
        else:
            problems.append((str(path), "no such file or folder"))
    return files, problems


def decode_image(data: bytes, size: int, where: str) -> np.ndarray:
    """Image file bytes -> (size, size, 3) uint8, or one :class:`DataError` naming ``where``: the whole image in
    RGB of any PIL mode, resized (not cropped); EXIF rotation applied; transparency composited over white;
    16-bit and float greyscale scaled to 8 bits (a plain ``convert`` would clip them).
    A 16-bit or float image is resized in its own precision before anything is copied, so a large one costs
    its decoded size once (2 or 4 bytes a pixel), not that again in float64 (a 16-bit PNG of 84 KB that
    declares 9,000 x 9,000 pixels took 0.84 GB before)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as img:
            img = ImageOps.exif_transpose(img)  # photos taken sideways
            wide = img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
            top = 65535.0 if wide and (img.getextrema()[1] or 0) > 255 else 255.0  # the whole image's range
            if (wide or img.mode in ("L", "RGB")) and img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR)  # first: the conversions copy less
            if wide:
                values = np.asarray(img, dtype=np.float32)
                img = Image.fromarray(np.clip(values * (255.0 / top), 0, 255).astype(np.uint8), mode="L")
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                rgba = img.convert("RGBA")
                img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            img = img.convert("RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            return np.array(img, dtype=np.uint8)  # a writable copy: torch.from_numpy warns on read-only ones
    except Exception as err:
        raise DataError(
            f"cannot decode image {where} ({type(err).__name__}: {err}): remove or replace the file"
        ) from err


def _iter_images(root: Path):
    """(split, class, relative path, bytes) of every image of a tree or a tar archive; for a file larger than
    :data:`MAX_IMAGE_FILE_BYTES`, its size (an int) instead of its bytes: nothing of it is read."""
    if root.is_dir():
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            relative = path.relative_to(root).as_posix()
            if key := _split_class_of(relative):
                small = path.stat().st_size <= MAX_IMAGE_FILE_BYTES
                yield *key, relative, path.read_bytes() if small else path.stat().st_size
        return
    try:
        if not tarfile.is_tarfile(root):  # rather than tarfile.open's message, a line per method it tried
            raise DataError(
                f"data.root={root} does not open as a tar archive (plain, gzip, bz2 or xz): point it at a "
                ".tar/.tar.gz of an image folder, or fetch the archive again"
            )
        with tarfile.open(root, "r:*") as tar:
            for member in tar:
                if member.isfile() and (key := _split_class_of(member.name)):
                    small = member.size <= MAX_IMAGE_FILE_BYTES  # the header's size: checked before reading
                    yield *key, member.name, tar.extractfile(member).read() if small else member.size
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise DataError(
            f"cannot read archive {root} ({first_line(err)}): is it a complete .tar/.tar.gz?"
        ) from err


def _read_folder(root: Path, image_size: int, skip_bad: bool) -> ImageArrays:
    found: dict[str, list[tuple[str, str, np.ndarray]]] = {split: [] for split in SPLITS}
    skipped = []
    for split, cls, relative, data in _iter_images(root):
        try:
            if isinstance(data, int):
                raise DataError(
                    f"image {root}/{relative} is {data:,} bytes, over the {MAX_IMAGE_FILE_BYTES:,}-byte limit "
                    "for one image file: remove or replace the file"
                )
            found[split].append((cls, relative, decode_image(data, image_size, f"{root}/{relative}")))
        except DataError as err:
            if not skip_bad:
                raise DataError(f"{err}{SKIP_HINT}") from None
            skipped.append(relative)
    for split in SPLITS:
        if not found[split]:
            raise DataError(
                f"no images under {split}/<class>/ in {root}: an image folder needs train/<class>/*.jpg|png "
                "and test/<class>/*.jpg|png"
            )
    classes, test_classes = (sorted({c for c, _, _ in found[split]}) for split in SPLITS)
    if classes != test_classes:
        raise DataError(
            f"train and test classes differ in {root}: only in train {sorted(set(classes) - set(test_classes))}, "
            f"only in test {sorted(set(test_classes) - set(classes))}"
        )
    index = {c: i for i, c in enumerate(classes)}
    arrays = {}
    for split in SPLITS:
        items = sorted(found[split], key=lambda item: (index[item[0]], item[1]))
        arrays[f"{split}_x"] = np.stack([img for _, _, img in items])
        arrays[f"{split}_y"] = np.array([index[c] for c, _, _ in items], dtype=np.int64)
    return ImageArrays(**arrays, classes=classes, description=f"image folder {root}", skipped=skipped)


def _cache_key(root: Path, image_size: int, skip_bad: bool) -> str:
    """Changes when the archive or any file of the tree changes (path, size, modification time), and with
    ``skip_bad``: a run without it decodes again, to stop at the first unreadable file as the first run would."""
    h = hashlib.sha256(f"{root.resolve()}|{image_size}|{skip_bad}".encode())
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for p in paths:
        st = p.stat()
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _read_cache(cache: Path, root: Path, image_size: int) -> ImageArrays | None:
    """The arrays a decode cache holds, or None (said in one log line) when it cannot be read or does not hold
    what the data needs (a truncated copy, a full disk, another file in its place): it is then rebuilt."""
    try:
        with np.load(cache) as z:
            arrays = ImageArrays(
                **{key: z[key] for key in ARRAY_KEYS},
                classes=[str(c) for c in z["classes"]],
                description=f"image folder {root}",
                skipped=[str(p) for p in z["skipped"]] if "skipped" in z else [],
            )
        n = len(arrays.classes)
        for split in SPLITS:  # what makes the arrays unfit for the data they stand for
            x, y = getattr(arrays, f"{split}_x"), getattr(arrays, f"{split}_y")
            if x.dtype != np.uint8 or x.shape[1:] != (image_size, image_size, 3) or len(x) == 0:
                raise ValueError(
                    f"{split}_x is {x.dtype} {x.shape}, not {image_size}x{image_size} RGB images"
                )
            if y.shape != (len(x),) or y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= n:
                raise ValueError(f"{split}_y does not label the {len(x)} images with {n} classes")
        return arrays
    # whatever a damaged file raises: BadZipFile, KeyError, ValueError, EOFError, zlib.error, OSError, ...
    except Exception as err:
        problem = f"{type(err).__name__}: {first_line(err)[:200]}"
    log.warning("decode cache %s is unusable (%s): decoding %s again to rebuild it", cache, problem, root)
    return None


def load_image_folder(
    root: Path, image_size: int, cache_dir: Path | None, skip_bad: bool = False, sha256: str | None = None
) -> ImageArrays:
    """Decode a ``train/<class>/*``, ``test/<class>/*`` tree or archive once; later calls read the cache. A
    file in a class folder that does not decode stops the run, naming it; with ``skip_bad`` it is left out and
    listed in ``ImageArrays.skipped``. ``sha256``: the archive's expected checksum, checked on every call."""
    if not (is_archive(root) or is_image_folder(root)):
        raise DataError(
            f"data.root={root} is not an image folder: expected a folder with train/<class>/* and "
            "test/<class>/*, or a .tar/.tar.gz/.tgz archive of one"
        )
    if sha256:  # a truncated download or another file
        with open(root, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        if digest != sha256.lower():
            raise DataError(
                f"archive {root} has SHA-256 {digest}, not data.sha256={sha256}: "
                "it is incomplete or another file; download it again, or correct data.sha256"
            )
    if cache_dir is None:
        return _read_folder(root, image_size, skip_bad)
    name = root.name.split(".")[0] or "images"
    cache = Path(cache_dir) / f"{name}-{image_size}px-{_cache_key(root, image_size, skip_bad)}.npz"
    if cache.exists() and (arrays := _read_cache(cache, root, image_size)) is not None:
        return arrays
    arrays = _read_folder(root, image_size, skip_bad)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, **vars(arrays))
        os.replace(tmp, cache)  # atomic: a killed run never leaves a half-written cache
    # a full disk, a read-only cache, a file in the way: the decoded data is not lost
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        log.warning("cannot write decode cache %s (%s): the next run decodes again", cache, first_line(err))
    return arrays


def make_synthetic(
    num_classes: int,
    train_per_class: int = 500,
    test_per_class: int = 100,
    image_size: int = 32,
    noise: float = 60.0,
    seed: int = 0,
) -> ImageArrays:
    """Class-dependent images: each class is a fixed random 4x4 colour layout, blown up, plus pixel noise."""
    rng = np.random.default_rng(seed)
    cells = rng.uniform(0, 255, size=(num_classes, 4, 4, 3))
    scale = -(-image_size // 4)  # ceil, then crop
    prototypes = cells.repeat(scale, axis=1).repeat(scale, axis=2)[:, :image_size, :image_size]

    def draw(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(num_classes), per_class)
        x = prototypes[y] + rng.normal(0, noise, size=(len(y), image_size, image_size, 3))
        return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)

    classes = [f"class_{i}" for i in range(num_classes)]
    return ImageArrays(*draw(train_per_class), *draw(test_per_class), classes, f"synthetic (seed {seed})")
