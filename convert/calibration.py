"""Image folders for calibration and evaluation: scanning, the labels.json split, balanced sampling.

Calibration pixels go through `edge_resnet.preprocess.crop_resize`, the same geometry the device
uses, so the ranges the quantizer sees are the ranges the device will produce.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from edge_resnet.errors import InputError
from edge_resnet.images import in_calibration_split, load_image
from edge_resnet.preprocess import ChannelOrder, PreprocessSpec, crop_resize

from .progress import Progress

log = logging.getLogger(__name__)

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp"})
LABELS_JSON = "labels.json"
MIN_GOOD = 100
_SYNSET = re.compile(r"^(n\d{8})")

Split = Literal["auto", "all", "calib", "eval"]


@dataclass(frozen=True)
class Item:
    """One image file; `class_index` is the ground truth when labels.json gives it."""

    path: Path
    group: str  # class key used for balancing (synset folder, synset prefix, or "")
    class_index: int | None = None


@dataclass
class Loaded:
    """Images at model size (HxWx3 uint8, model channel order) and what happened on the way."""

    images: npt.NDArray[np.uint8]
    items: list[Item]
    found: int
    corrupt: list[Path] = field(default_factory=list)

    @property
    def classes(self) -> int:
        return len({i.group for i in self.items})


def scan(root: str | Path) -> list[Path]:
    """All JPEG/PNG/BMP files under `root`, recursively, in a stable order."""
    r = Path(root)
    if not r.exists():
        raise InputError(f"image folder {r} not found; pass a folder of JPEG/PNG/BMP images")
    if not r.is_dir():
        raise InputError(f"{r} is not a folder; pass a folder of JPEG/PNG/BMP images")
    return sorted(p for p in r.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def _group(root: Path, p: Path) -> str:
    rel = p.relative_to(root)
    if len(rel.parts) > 1:
        return rel.parts[0]  # ImageNet-style synset (or any class) folders
    m = _SYNSET.match(p.name)
    return m.group(1) if m else ""


def items(root: str | Path, split: Split = "all") -> list[Item]:
    """Images of `root`, restricted to one side of the labels.json split when asked.

    With a labels.json (list of {file, class_index, ...}), its order defines the split: entries at
    positions divisible by 5 are the calibration part, the others the evaluation part.
    """
    r = Path(root)
    files = scan(r)
    labels = read_labels_json(r)
    if labels is None:
        if split in ("calib", "eval"):
            raise InputError(
                f"--{split}-split {split} needs {r / LABELS_JSON} to define the split; "
                "use --calib-split all / --eval-split all or add the file"
            )
        return [Item(p, _group(r, p)) for p in files]
    present = {p.relative_to(r).as_posix(): p for p in files}
    out: list[Item] = []
    for pos, entry in enumerate(labels):
        if split == "calib" and not in_calibration_split(pos):
            continue
        if split == "eval" and in_calibration_split(pos):
            continue
        p = present.get(entry["file"])
        if p is None:
            continue
        ci = entry.get("class_index")
        group = str(entry.get("synset") or ci or _group(r, p))
        out.append(Item(p, group, int(ci) if ci is not None else None))
    return out


def read_labels_json(root: Path) -> list[dict[str, Any]] | None:
    f = root / LABELS_JSON
    if not f.is_file():
        return None
    try:
        data = json.loads(f.read_text())
        if not isinstance(data, list) or not all(isinstance(e, dict) and "file" in e for e in data):
            raise ValueError("expected a list of objects with a 'file' key")
    except ValueError as e:
        raise InputError(f"{f} is not a valid labels file ({e}); fix or remove it") from None
    return data


def resolve_splits(calib: Path, eval_dir: Path | None, calib_split: Split, eval_split: Split) -> tuple[Split, Split]:
    """`auto`: split by labels.json when calibration and evaluation share one folder, else use all."""
    same = eval_dir is not None and calib.resolve() == eval_dir.resolve()
    has_json = (calib / LABELS_JSON).is_file()
    c: Split = ("calib" if same and has_json else "all") if calib_split == "auto" else calib_split
    e: Split = ("eval" if same and has_json else "all") if eval_split == "auto" else eval_split
    return c, e


def balanced_order(pool: Sequence[Item], seed: int) -> list[Item]:
    """Seeded round-robin over classes: any prefix of the result is as class-balanced as possible."""
    rng = random.Random(seed)
    by_group: dict[str, list[Item]] = defaultdict(list)
    for it in pool:
        by_group[it.group].append(it)
    groups = sorted(by_group)
    for g in groups:
        rng.shuffle(by_group[g])
    rng.shuffle(groups)
    order: list[Item] = []
    depth = 0
    while len(order) < len(pool):
        for g in groups:
            if depth < len(by_group[g]):
                order.append(by_group[g][depth])
        depth += 1
    return order


def read_image(path: Path) -> npt.NDArray[np.uint8] | None:
    """BGR uint8 image (the runtime's own loader), or None when the file is not a decodable image."""
    try:
        return load_image(path)
    except InputError:
        return None


def load(
    pool: Sequence[Item],
    count: int | None,
    hw: tuple[int, int],
    spec: PreprocessSpec,
    seed: int = 0,
    what: str = "calibration",
) -> Loaded:
    """Load up to `count` images (all when None) in balanced order, skipping corrupt files.

    Each image is cropped and resized exactly as the device will and returned in the model's
    channel order. Zero usable images is an error; fewer than 100 a warning.
    """
    order = balanced_order(pool, seed) if count is not None else list(pool)
    want = len(order) if count is None else min(count, len(order))
    images: list[npt.NDArray[np.uint8]] = []
    used: list[Item] = []
    corrupt: list[Path] = []
    with Progress(f"loading {what} images", want) as bar:
        for it in order:
            if len(images) >= want:
                break
            bgr = read_image(it.path)
            if bgr is None:
                corrupt.append(it.path)
                continue
            img = crop_resize(bgr, hw, spec.crop_fraction, spec.interpolation)
            images.append(_to_order(img, spec.channel_order))
            used.append(it)
            bar.update()
    if corrupt:
        log.warning("%s: skipped %d unreadable image(s), e.g. %s", what, len(corrupt), corrupt[0])
    if not images:
        raise InputError(
            f"no usable {what} images ({len(pool)} found, {len(corrupt)} unreadable); "
            "pass a folder with JPEG/PNG/BMP photos"
        )
    if what == "calibration" and len(images) < MIN_GOOD:
        log.warning(
            "only %d usable calibration images; %d or more give stable INT8 ranges", len(images), MIN_GOOD
        )
    return Loaded(np.stack(images), used, len(pool), corrupt)


def _to_order(bgr: npt.NDArray[np.uint8], order: ChannelOrder) -> npt.NDArray[np.uint8]:
    return bgr if order == "BGR" else np.ascontiguousarray(bgr[:, :, ::-1])
