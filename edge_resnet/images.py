"""Finding and reading image files, shared by classify, calibration and evaluation."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from .errors import InputError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
SPLIT_EVERY = 5  # the labels.json split: position % 5 == 0 calibrates, the rest evaluates


def in_calibration_split(position: int) -> bool:
    """The one split rule for a labels.json folder (conversion, evaluation and `bench` all use it),
    so calibration and evaluation images never overlap."""
    return position % SPLIT_EVERY == 0


def list_images(paths: Iterable[str | os.PathLike[str]], recursive: bool = True) -> list[Path]:
    """Image files named directly, or found in folders (sorted, so runs are reproducible)."""
    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            pattern = "**/*" if recursive else "*"
            found.extend(sorted(f for f in p.glob(pattern) if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES))
        elif p.exists():
            found.append(p)
        else:
            raise InputError(f"{p} does not exist; pass an image file or a folder of images")
    return found


def load_image(path: str | os.PathLike[str]) -> npt.NDArray[np.uint8]:
    """Read an image as BGR uint8 (OpenCV's order); InputError when it is missing or not an image."""
    p = Path(path)
    try:
        data = np.fromfile(p, dtype=np.uint8)
    except OSError as e:
        raise InputError(f"cannot read image {p} ({e.strerror}); check the path and permissions") from None
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise InputError(f"cannot decode image {p}: not a readable JPEG/PNG/BMP; replace or remove it")
    return np.asarray(img, dtype=np.uint8)
