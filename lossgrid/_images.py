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

Example:
    >>> spec = parse_imagefolder_spec("photos:size=64x48:norm=imagenet")
    >>> spec.directory, spec.size, spec.mean
    ('photos', (64, 48), (0.485, 0.456, 0.406))
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._cifar import CIFAR_NORMS, Norm, normalize_images, parse_norm
from .errors import DataLoadError, MissingBackendError

#: per-channel normalizations by name for ``imagefolder:`` (RGB)
IMAGE_NORMS: dict[str, Norm] = {
    "none": CIFAR_NORMS["none"],
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "reference": CIFAR_NORMS["reference"],
}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
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
    return (dims[0], dims[-1])


def find_images(directory: str) -> tuple[list[str], list[tuple[str, int]]]:
    """The class names (sorted) and ``(path, label)`` of every image file, in a fixed order."""
    if not os.path.isdir(directory):
        why = "it is a file, not a directory" if os.path.exists(directory) else "it does not exist"
        raise DataLoadError(f"Cannot read image folder {directory!r}", why,
                            "point imagefolder: to a directory with one subdirectory of images per class")
    classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        loose = [n for n in os.listdir(directory) if n.lower().endswith(IMAGE_EXTENSIONS)]
        why = (f"it holds {len(loose)} images but no subdirectories" if loose
               else "it has no subdirectories")
        raise DataLoadError(f"Image folder {directory!r} has no classes", why,
                            "put the images of each class in a subdirectory named after the class "
                            "(DIR/cat/1.png, DIR/dog/2.png); labels follow the sorted names")
    samples: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        walked = []
        seen: set[str] = set()  # real paths: a symlink loop is walked once
        for root, dirs, files in os.walk(os.path.join(directory, name), followlinks=True):
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
        samples += [(path, label) for path in found]
    return classes, samples


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
    """One image as uint8 ``[C, H, W]`` (``C`` = 3, or 1 with ``gray``), resized to ``size`` = (H, W)."""
    image_mod = _pillow()
    try:
        with image_mod.open(path) as img:
            img = img.convert("L" if gray else "RGB")
            if size is not None and img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), getattr(image_mod, "Resampling", image_mod).BILINEAR)
            pixels = np.asarray(img, dtype=np.uint8)
    except Exception as e:  # Pillow raises many kinds of errors on a corrupt file
        raise DataLoadError(f"Cannot read image {path}", f"{type(e).__name__}: {e}",
                            "replace or remove the file (every file with an image extension is read)") from None
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


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
        elif pixels.shape != first[1]:
            raise DataLoadError(f"Image {path} is {pixels.shape[1]}x{pixels.shape[2]} (HxW) but {first[0]} "
                                f"is {first[1][1]}x{first[1][2]}",
                                "without size= every image must have the same size",
                                "add :size=HxW to resize them all, e.g. imagefolder:DIR:size=224")
        images.append(pixels)
    labels = np.asarray([label for _, label in samples], dtype=np.int64)
    return normalize_images(np.stack(images), spec.mean, spec.std), labels
