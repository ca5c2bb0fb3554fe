"""Image folders: one subdirectory per class, read with Pillow into one normalized array.

``imagefolder:DIR[:size=H[xW]][:norm=NORM][:gray]`` follows torchvision's
``ImageFolder``: the class subdirectories of ``DIR``, sorted by name, are the
labels ``0..C-1``; every image file below each of them (any depth; sorted by
directory, then by name, as torchvision orders them) is one sample. Files are
recognized by extension (png, jpg, jpeg, bmp, gif, webp, tif, tiff, ppm, pgm;
any case); hidden files and directories (a leading ``.``) are skipped. Each
image is converted to RGB (``L`` with ``:gray``), resized to exactly ``H x W``
with bilinear filtering when ``size`` is given (``size=H`` means ``H x H``;
what torchvision's ``Resize((H, W))`` does to a PIL image), scaled to [0, 1]
in float32 and normalized per channel (``norm=none``, the default, leaves it
in [0, 1]).

Hostile folders are refused with a :class:`~lossgrid.errors.DataLoadError`
rather than hanging or exhausting memory: entries that are not regular files
(FIFOs, sockets, devices) are skipped with a logged warning, or refused when a
class has nothing else; an image larger than :data:`MAX_IMAGE_PIXELS` is refused
from its header, before its pixels are decoded; only the formats the extensions
name are decoded (Pillow picks a decoder by content); a set that would not fit
in the available memory is refused after its first image.

Example:
    >>> spec = parse_imagefolder_spec("photos:size=64x48:norm=imagenet")
    >>> spec.directory, spec.size, spec.mean
    ('photos', (64, 48), (0.485, 0.456, 0.406))
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._cifar import (
    CIFAR_NORMS,
    Norm,
    normalize_images,
    parse_norm,
)
from ._files import open_regular, os_reason, special_file_problem
from ._memory import memory_problem
from .errors import DataLoadError, MissingBackendError

log = logging.getLogger(__name__)

#: per-channel normalizations by name for ``imagefolder:`` (RGB)
IMAGE_NORMS: dict[str, Norm] = {
    "none": CIFAR_NORMS["none"],
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "reference": CIFAR_NORMS["reference"],
}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
#: the Pillow formats of those extensions (PPM reads .pgm too). Pillow picks a decoder by a
#: file's content, so without this list a file named .png could be read by any of its
#: decoders (EPS, for one, runs Ghostscript).
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "DIB", "GIF", "WEBP", "TIFF", "PPM")
#: the most pixels (width x height) an image, or size=, may have: 8192 x 8192. More than any
#: photo or scan a model is evaluated on, and one decoded RGB image stays under 200 MB. An
#: image's size is read from its header and checked before its pixels are decoded; the bound
#: is below Pillow's own decompression-bomb warning (about 89 million pixels).
MAX_IMAGE_PIXELS = 8192 * 8192
_HINT = "write imagefolder:DIR[:size=H[xW]][:norm=imagenet|none|reference|M,M,M/S,S,S][:gray]"


@dataclass(frozen=True)
class ImageFolderSpec:
    """What ``imagefolder:`` reads: the folder, the size ``(H, W)`` (``None``: as stored),
    the per-channel mean and std, and whether images are read as one gray channel."""

    directory: str
    size: tuple[int, int] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    gray: bool


def parse_imagefolder_spec(arg: str) -> ImageFolderSpec:
    """``DIR[:size=H[xW]][:norm=NORM][:gray]`` -> :class:`ImageFolderSpec`."""
    directory, *options = arg.split(":")
    size: tuple[int, int] | None = None
    norm_text, gray = "none", False
    for option in options:
        if option.startswith("size="):
            size = _parse_size(option[len("size="):])
        elif option.startswith("norm="):
            norm_text = option[len("norm="):]
        elif option == "gray":
            gray = True
        else:
            raise DataLoadError(f"Unknown imagefolder option {option!r}",
                                "after the directory come :size=H[xW], :norm=NORM and :gray", _HINT)
    if not directory:
        raise DataLoadError("The imagefolder spec names no directory", hint=_HINT)
    if gray and norm_text in IMAGE_NORMS and norm_text != "none":
        raise DataLoadError(f"Cannot use norm={norm_text} with :gray",
                            f"{norm_text} has three channels (R, G, B) and :gray images have one",
                            "give one mean and one std, e.g. norm=0.5/0.5, or leave out :gray")
    mean, std = parse_norm(norm_text, {"none": ((0.0,), (1.0,))} if gray else IMAGE_NORMS, 1 if gray else 3)
    return ImageFolderSpec(directory, size, mean, std, gray)


def _parse_size(text: str) -> tuple[int, int]:
    try:
        dims = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        dims = ()
    if len(dims) not in (1, 2) or min(dims) < 1:
        raise DataLoadError(f"Cannot read image size {text!r}", "it needs one or two positive integers (H or HxW)",
                            "write size=224 or size=32x48 (height x width)")
    if dims[0] * dims[-1] > MAX_IMAGE_PIXELS:
        raise DataLoadError(f"Image size {text!r} is too large",
                            f"it has {dims[0] * dims[-1]:,} pixels; at most {MAX_IMAGE_PIXELS:,} are read",
                            "write a smaller size=, e.g. size=224")
    return (dims[0], dims[-1])


def find_images(directory: str) -> tuple[list[str], list[tuple[str, int]]]:
    """The class names (sorted) and ``(path, label)`` of every image file, in a fixed order;
    entries that are not regular files are left out (see the module docstring)."""
    if not os.path.isdir(directory):
        why = "it is a file, not a directory" if os.path.exists(directory) else "it does not exist"
        raise DataLoadError(f"Cannot read image folder {directory!r}", why,
                            "point imagefolder: to a directory with one subdirectory of images per class")
    classes = _class_names(directory)
    samples: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        samples += [(path, label) for path in _class_images(directory, name)]
    return classes, samples


def _unlistable(folder: str, e: OSError) -> DataLoadError:
    return DataLoadError(f"Cannot list image folder {folder!r}", os_reason(e),
                         "make it readable by this user, or move it out of the image folder")


def _class_names(directory: str) -> list[str]:
    try:
        with os.scandir(directory) as entries:
            classes = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
        loose = [] if classes else [n for n in os.listdir(directory) if n.lower().endswith(IMAGE_EXTENSIONS)]
    except OSError as e:
        raise _unlistable(directory, e) from None
    if not classes:
        why = (f"it holds {len(loose)} images but no subdirectories" if loose
               else "it has no subdirectories")
        raise DataLoadError(f"Image folder {directory!r} has no classes", why,
                            "put the images of each class in a subdirectory named after the class "
                            "(DIR/cat/1.png, DIR/dog/2.png); labels follow the sorted names")
    return classes


def _class_images(directory: str, name: str) -> list[str]:
    """The image files below class ``name``, in torchvision's order, special files left out."""
    def fail(e: OSError) -> None:  # os.walk skips a folder it cannot list unless told otherwise
        raise _unlistable(e.filename or folder, e)

    folder = os.path.join(directory, name)
    walked = []
    seen: set[str] = set()  # real paths: a symlink loop is walked once
    for root, dirs, files in os.walk(folder, onerror=fail, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        walked.append((root, sorted(f for f in files if not f.startswith(".")
                                    and f.lower().endswith(IMAGE_EXTENSIONS))))
    found = [os.path.join(root, f) for root, files in sorted(walked) for f in files]  # torchvision's order
    if not found:
        raise DataLoadError(f"Class {name!r} of image folder {directory!r} holds no images",
                            f"no file below it ends with {', '.join(IMAGE_EXTENSIONS)}",
                            "add images to it or remove the directory (every subdirectory is a class)")
    return _regular_files(found, f"Class {name!r} of image folder {directory!r}")


def _regular_files(paths: list[str], where: str) -> list[str]:
    """``paths`` without the FIFOs, sockets and devices among them (opening one could block
    forever), each skipped with a warning; refused if nothing else is left."""
    problems = [(path, special_file_problem(path)) for path in paths]
    regular = [path for path, problem in problems if problem is None]
    special = [(path, problem) for path, problem in problems if problem is not None]
    if special and not regular:
        more = f" (and {len(special) - 1} more)" if len(special) > 1 else ""
        raise DataLoadError(f"{where} holds no image files", f"{special[0][0]}: {special[0][1]}{more}",
                            "replace it with image files or remove it (only regular files are read)")
    for path, problem in special:
        log.warning("Skipping %s: %s", path, problem)
    return regular


def _pillow() -> Any:
    try:
        from PIL import Image
    except Exception as e:  # ImportError, or a broken install raising anything on import
        raise MissingBackendError("Reading image folders needs the Python package 'Pillow', which cannot be "
                                  "imported", f"{type(e).__name__}: {e}",
                                  "install it with: pip install pillow (matplotlib, which lossgrid "
                                  "requires, normally brings it)") from None
    return Image


def read_image(path: str, gray: bool, size: tuple[int, int] | None) -> np.ndarray:
    """One image as uint8 ``[C, H, W]`` (``C`` = 3, or 1 with ``gray``), resized to ``size`` = (H, W).
    Refused, with the file named: anything but a regular file, an image of more than
    :data:`MAX_IMAGE_PIXELS` pixels (before decoding), a format outside :data:`IMAGE_FORMATS`."""
    image_mod = _pillow()
    hint = "replace or remove the file (every file with an image extension is read)"
    problem = special_file_problem(path)
    if problem:
        raise DataLoadError(f"Cannot read image {path}", problem, hint)
    try:
        with open_regular(path) as fh, warnings.catch_warnings():
            # Pillow warns from 89 million pixels; the size is checked below, against a lower bound
            warnings.simplefilter("ignore", image_mod.DecompressionBombWarning)
            with image_mod.open(fh, formats=_formats(image_mod)) as img:
                if img.size[0] * img.size[1] > MAX_IMAGE_PIXELS:  # from the header: nothing decoded yet
                    raise _too_large(path, img.size[0] * img.size[1])
                pixels = _decode(img, image_mod, gray, size)
    except DataLoadError:
        raise
    except image_mod.DecompressionBombError as e:  # Pillow's own check, in Image.open; its message has the count
        count = re.search(r"\((\d+) pixels\)", str(e))
        raise _too_large(path, int(count.group(1)) if count else None) from None
    except Exception as e:  # Pillow raises many kinds of errors on a corrupt file
        raise DataLoadError(f"Cannot read image {path}", f"{type(e).__name__}: {e}", hint) from None
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _formats(image_mod: Any) -> list[str]:
    """Those of :data:`IMAGE_FORMATS` this Pillow reads (``Image.open`` fails on a format it lacks)."""
    image_mod.init()  # registers every plugin, once
    return [name for name in IMAGE_FORMATS if name in image_mod.OPEN]


def _too_large(path: str, pixels: int | None) -> DataLoadError:
    """The error for an image of ``pixels`` pixels (``None``: more than Pillow allows)."""
    count = f"{pixels:,} pixels" if pixels is not None else "more pixels than Pillow allows"
    return DataLoadError(f"Image {path} is too large to read",
                         f"it has {count}; at most {MAX_IMAGE_PIXELS:,} (8192 x 8192) are read, a bound that "
                         "keeps a decompression bomb (a small file of enormous dimensions) out of memory",
                         "shrink the image or remove it")


def _decode(img: Any, image_mod: Any, gray: bool, size: tuple[int, int] | None) -> np.ndarray:
    img = img.convert("L" if gray else "RGB")
    if size is not None and img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), getattr(image_mod, "Resampling", image_mod).BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def load_imagefolder(arg: str) -> tuple[np.ndarray, np.ndarray]:
    """Normalized images ``[N, C, H, W]`` (float32) and labels ``[N]`` (int64) of ``imagefolder:ARG``."""
    spec = parse_imagefolder_spec(arg)
    _, samples = find_images(spec.directory)
    first: tuple[str, tuple[int, ...]] | None = None
    images = []
    for path, _ in samples:
        pixels = read_image(path, spec.gray, spec.size)
        if first is None:
            first = (path, pixels.shape)
            _check_memory(len(samples), pixels, spec.directory)
        elif pixels.shape != first[1]:
            raise DataLoadError(f"Image {path} is {pixels.shape[1]}x{pixels.shape[2]} (HxW) but {first[0]} "
                                f"is {first[1][1]}x{first[1][2]}",
                                "without size= every image must have the same size",
                                "add :size=HxW to resize them all, e.g. imagefolder:DIR:size=224")
        images.append(pixels)
    labels = np.asarray([label for _, label in samples], dtype=np.int64)
    return normalize_images(np.stack(images), spec.mean, spec.std), labels


def _check_memory(count: int, first: np.ndarray, directory: str) -> None:
    """Refuse, before reading the rest, ``count`` images the size of ``first`` that would not fit in memory."""
    problem = memory_problem(count * first.size * 6)  # per value: the uint8 image, its stacked copy, float32
    if problem:
        c, h, w = first.shape
        raise DataLoadError(f"Cannot load {count:,} images of {c}x{h}x{w} from image folder {directory!r}",
                            problem, "pass a smaller :size=HxW, or use fewer images")
