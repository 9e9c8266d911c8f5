"""Test inputs made from real photos: video files (each photo held N seconds) and image folders.

Used by the daemon, capture and end-to-end tests. Plain functions:

    picks = pick_samples(samples_dir, 5)                     # ImageNet sample photos + their class
    schedule = write_video(tmp / "v.avi", picks, seconds_each=2.0, fps=10)
    write_folder(tmp / "imgs", picks)

`schedule` says which photo is on screen when: a list of `Segment(start_s, end_s, sample)`, so a
test can check that the label published at video time t matches `segment_at(schedule, t)`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Sample:
    """An ImageNet sample photo: `class_index` is 0..999 (the model's output slot is +1 for 1001-class models)."""

    path: Path
    class_index: int
    name: str


@dataclass(frozen=True)
class Segment:
    start_s: float
    end_s: float
    sample: Sample


def pick_samples(samples_dir: str | os.PathLike[str], n: int, start: int = 0, step: int = 37) -> list[Sample]:
    """`n` photos from `labels.json`, spread over the classes (every `step`-th entry from `start`)."""
    d = Path(samples_dir)
    entries = json.loads((d / "labels.json").read_text(encoding="utf-8"))
    out: list[Sample] = []
    i = start
    while len(out) < n:
        e = entries[i % len(entries)]
        out.append(Sample(d / e["file"], int(e["class_index"]), str(e["name"])))
        i += step
    return out


def _as_path(item: Sample | str | os.PathLike[str]) -> Path:
    return item.path if isinstance(item, Sample) else Path(item)


def fit(image: npt.NDArray[np.uint8], size: tuple[int, int]) -> npt.NDArray[np.uint8]:
    """Scale to cover `size` (width, height) and centre-crop: the subject stays in the middle."""
    w, h = size
    ih, iw = image.shape[:2]
    s = max(w / iw, h / ih)
    resized = cv2.resize(image, (max(w, round(iw * s)), max(h, round(ih * s))), interpolation=cv2.INTER_AREA)
    y0 = (resized.shape[0] - h) // 2
    x0 = (resized.shape[1] - w) // 2
    return np.ascontiguousarray(resized[y0 : y0 + h, x0 : x0 + w])


def read(item: Sample | str | os.PathLike[str]) -> npt.NDArray[np.uint8]:
    img = cv2.imread(str(_as_path(item)), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"cannot read image {_as_path(item)}")
    return np.asarray(img, dtype=np.uint8)


def write_video(
    path: str | os.PathLike[str],
    images: Sequence[Sample | str | os.PathLike[str]],
    seconds_each: float = 2.0,
    fps: float = 10.0,
    size: tuple[int, int] = (320, 240),
    fourcc: str = "MJPG",
) -> list[Segment]:
    """Write a real video file (MJPG in .avi by default; use fourcc "mp4v" for .mp4) holding each
    image for `seconds_each` seconds; returns the schedule of what is on screen when."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter.fourcc(*fourcc), fps, size)
    if not writer.isOpened():
        raise RuntimeError(f"cv2.VideoWriter cannot write {out} with fourcc {fourcc}")
    per = max(1, round(seconds_each * fps))
    schedule: list[Segment] = []
    try:
        for i, item in enumerate(images):
            frame = fit(read(item), size)
            for _ in range(per):
                writer.write(frame)
            sample = item if isinstance(item, Sample) else Sample(_as_path(item), -1, _as_path(item).stem)
            schedule.append(Segment(i * per / fps, (i + 1) * per / fps, sample))
    finally:
        writer.release()
    return schedule


def segment_at(schedule: Sequence[Segment], t: float) -> Segment | None:
    for seg in schedule:
        if seg.start_s <= t < seg.end_s:
            return seg
    return None


def write_folder(
    dst: str | os.PathLike[str],
    images: Sequence[Sample | str | os.PathLike[str]],
    size: tuple[int, int] | None = None,
) -> Path:
    """Copy images (re-encoded as JPEG, optionally fitted to `size`) into `dst` as 000_name.jpg ..."""
    d = Path(dst)
    d.mkdir(parents=True, exist_ok=True)
    for i, item in enumerate(images):
        img = read(item)
        if size is not None:
            img = fit(img, size)
        cv2.imwrite(str(d / f"{i:03d}_{_as_path(item).stem}.jpg"), img)
    return d
