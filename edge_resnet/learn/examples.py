"""The examples folder `learn` reads: one sub-folder of images per class, the folder name the label.

Everything a user can get wrong here is one line naming the folder and the fix, before any model
is written: one class, an empty class, a name that cannot be a label or a folder (a line break
would split labels.txt; `..` or a slash would lead out of the folder when examples are stored
under their class name), a corrupt image (skipped and counted), or no images at all. Images and
class folders may be symbolic links: learning only reads them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from ..errors import InputError
from .head import UNKNOWN

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
MAX_EXAMPLES = 10_000  # a head needs tens per class; more is a folder given by mistake
MAX_NAME = 64
_BAD_NAME = re.compile(r"[\x00-\x1f\x7f/\\]")


def check_class_name(name: str, where: str) -> str:
    """A class name that is safe as a label and as a folder name; InputError otherwise."""
    stripped = name.strip()
    why = ""
    if not stripped or stripped in (".", ".."):
        why = "is empty or a path step"
    elif _BAD_NAME.search(name):
        why = "contains a path separator or a control character"
    elif stripped.startswith("."):
        why = "starts with a dot"
    elif len(stripped) > MAX_NAME:
        why = f"is longer than {MAX_NAME} characters"
    elif stripped.lower() == UNKNOWN:
        why = f"is {UNKNOWN!r}, which the head reserves for frames no class convinces"
    if why:
        raise InputError(f"class name {name!r} in {where} {why}; rename it (letters, digits, spaces, - and _)")
    return stripped


GREY_SATURATION = 12.0  # mean HSV saturation (0..255) under which a picture is a grey (night-mode) frame


@dataclass(frozen=True)
class Example:
    path: Path
    label: int
    height: int
    width: int
    grey: bool = False  # a grey (night-mode) frame


def is_grey(image: npt.NDArray[np.uint8]) -> bool:
    return float(cv2.cvtColor(image, cv2.COLOR_BGR2HSV)[..., 1].mean()) < GREY_SATURATION


@dataclass
class ExampleSet:
    folder: Path
    classes: list[str]
    examples: list[Example]
    images: list[npt.NDArray[np.uint8]]  # BGR, as cv2 reads them; freed once embedded
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # unreadable files and why

    @property
    def labels(self) -> npt.NDArray[np.int64]:
        return np.array([e.label for e in self.examples], dtype=np.int64)


def _images_in(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def load(folder: str | Path) -> ExampleSet:
    """Read every class folder's images; corrupt files are skipped and counted."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"examples folder {root} not found; pass a folder with one sub-folder of images per class")
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for d in dirs:
        check_class_name(d.name, str(root))
    loose = _images_in(root)
    if len(dirs) < 2:
        have = f"one class ({dirs[0].name})" if dirs else "no class folders"
        extra = f" and {len(loose)} loose images" if loose else ""
        raise InputError(
            f"{root} has {have}{extra}; a head needs at least two classes: put each class's images in a "
            "sub-folder named after the class"
        )
    files = [(d, _images_in(d)) for d in dirs]
    empty = [d for d, fs in files if not fs]
    if empty:
        raise InputError(f"class folder {empty[0]} has no images; add .jpg/.png images of that class or remove it")
    total = sum(len(fs) for _, fs in files)
    if total > MAX_EXAMPLES:
        raise InputError(f"{root} has {total} images, over the {MAX_EXAMPLES} a head is made from; pick fewer")
    classes = [d.name.strip() for d in dirs]
    examples: list[Example] = []
    images: list[npt.NDArray[np.uint8]] = []
    skipped: list[tuple[Path, str]] = []
    for label, (_, fs) in enumerate(files):
        for f in fs:
            img = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if img is None or img.size == 0:
                skipped.append((f, "not a readable image"))
                continue
            bgr = np.asarray(img, dtype=np.uint8)
            examples.append(Example(f, label, int(bgr.shape[0]), int(bgr.shape[1]), is_grey(bgr)))
            images.append(bgr)
    left = np.bincount([e.label for e in examples], minlength=len(classes))
    if (left == 0).any():
        bad = dirs[int(np.flatnonzero(left == 0)[0])]
        raise InputError(f"class folder {bad} has no readable image ({len(_images_in(bad))} unreadable); replace them")
    return ExampleSet(root, classes, examples, images, skipped)
