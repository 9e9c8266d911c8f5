"""Tasks for "your own classes" (issue 20), built at run time from the shared test photos.

Nothing here is stored in the repository: every image is made (or read) from ../shared/data when a
test, a benchmark or the device lab asks for it. numpy and OpenCV only.

    task = states_task(data_dir, "large", n_per_class=60, seed=0)   # fixed-camera states
    task = coarse_task(data_dir)                                    # coarse ImageNet categories
    for train_idx, test_idx in splits(task.labels, k=5, repeats=10, seed=0): ...
    truth = write_folders(task, tmp / "examples", tmp / "test", k=5, seed=0)

**States** (`states_task`): one fixed camera, one scene. The frame (640x480) is the ImageNet sample
`patio` upscaled; the camera classifies a 256x256 region of it (counter front, a plant pot, the
floor; the model's 0.875 centre crop then sees its middle 224x224). In the region a cupboard door is
built into the counter: a panel textured with the wood of the `file` (filing cabinet) sample, a dark
joint around it and a metal handle. Three states:

- `empty`: the door closed, nothing in front of it;
- `parcel`: the door closed and a parcel (the box of the `carton` sample, aspect 1.2-1.5, rotated
  up to +-5 degrees, with a soft shadow) standing in front of it, on the floor;
- `door_open`: the door swung open on its left hinge by 40-80 degrees (the panel foreshortened in
  perspective beside the opening) and the opening showing a dark cupboard inside (the `bookcase`
  sample, darkened).

`size="large"`: the door covers 45 % of the region's area and the parcel 40-70 % (drawn per example);
`size="small"`: the door 10 % and the parcel 8-15 %. Area fractions are of the 256x256 region; the
parcel's is measured after clipping to the region and stored per example in `Task.areas` (the door's
area for `empty` and `door_open`, whose difference is the door).

Each example is a different realisation of its state, applied to the whole frame as a camera would:
the parcel's position jitters (+-12 px large, +-16 px small) and its size is drawn in its range; a
passing shadow (a blurred dark ellipse, x0.55-0.8) crosses the region in 25 % of examples of every
class; a light gradient across the frame (up to +-15 %); contrast x0.75-1.25 and brightness
x0.65-1.35 with an offset of +-15 levels; gamma 0.75-1.35; in 20 % of examples the grey low-light
variant (desaturated, x0.3-0.5: a camera's night mode); a slight blur (sigma 0.5-1.1) in 30 %;
Gaussian sensor noise (sigma 1.5-6 levels, 4-10 in low light); JPEG re-encoding of the frame at a
random quality 30-95; and the region cut out shifted by up to +-4 px each way. Returned images are
the region crops (uint8 BGR, 256x256): what a user would label.

The generator is deterministic for a seed: numpy's PCG64 draws every parameter, the pixel work is
fixed-point OpenCV calls (resize, warps, blur, colour, JPEG), lookup tables and float32 element-wise
arithmetic rounded once, so another machine should make the same images: on x86 they are identical
with OpenCV's and numpy's AVX/SSE4 paths switched off; `fingerprint` compares two machines (arm64).

**Coarse categories** (`coarse_task`): the ImageNet samples (one photo a class, most 256 px on the
short side) grouped by class index, counted from labels.json: dogs 151-268 (118 photos), birds 7-24, 80-100,
127-146 (59), reptiles 33-68 without triceratops 51 (35), insects and spiders 70-79, 300-326 (37),
food 924-969 without hay 958 and cup 968 (44): 293 photos, at least 35 a category, so k = 20
leaves at least 15 a category to test on. Primates (365-384) would have only 20.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]
Ints = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]
Size = Literal["large", "small"]

FRAME_W, FRAME_H = 640, 480
REGION = (136, 196, 256)  # x0, y0, side: the crop the camera classifies, in frame pixels
STATES = ("empty", "parcel", "door_open")

SCENE = "n03899768_patio.JPEG"
PARCEL = ("n02971356_carton.JPEG", (5, 44, 332, 227))  # file, box x0, y0, x1, y1 in the sample
# the box's outline in the sample (the photo around it is not pasted)
PARCEL_OUTLINE = (
    (50, 47),
    (275, 44),
    (331, 97),
    (330, 135),
    (312, 137),
    (305, 212),
    (40, 226),
    (22, 150),
    (5, 148),
    (5, 110),
)
PANEL = ("n03337140_file.JPEG", (96, 68, 228, 150))  # the filing cabinet's wooden front, between the handles
INTERIOR = ("n02870880_bookcase.JPEG", (40, 30, 300, 230))  # shelves: what an open cupboard shows

# door rectangle (x, y, w, h) in region pixels, and the parcel's area range (fraction of the region)
DOOR: dict[str, tuple[int, int, int, int]] = {"large": (30, 22, 172, 172), "small": (44, 56, 80, 82)}
PARCEL_AREA: dict[str, tuple[float, float]] = {"large": (0.40, 0.70), "small": (0.08, 0.15)}
PARCEL_JITTER = {"large": 12, "small": 16}

COARSE: dict[str, tuple[tuple[int, int], ...]] = {
    "dogs": ((151, 268),),
    "birds": ((7, 24), (80, 100), (127, 146)),
    "reptiles": ((33, 68),),
    "insects_spiders": ((70, 79), (300, 326)),
    "food": ((924, 969),),
}
COARSE_EXCLUDED = {51: "triceratops", 958: "hay", 968: "cup"}


@dataclass
class Task:
    """Images with integer labels into `classes`. `areas`: per example, the fraction of the region
    covered by what makes its state (states tasks; NaN for coarse). `files`: source photos (coarse).
    `params`: what each states example drew (gain, gamma, grey, quality, shift ...), for analysis."""

    name: str
    classes: list[str]
    images: list[Image]
    labels: Ints
    areas: npt.NDArray[np.float64]
    files: list[str] = field(default_factory=list)
    params: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)


def _read(path: Path) -> Image:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return np.asarray(img, dtype=np.uint8)


def _crop(data_dir: Path, spec: tuple[str, tuple[int, int, int, int]]) -> Image:
    name, (x0, y0, x1, y1) = spec
    return np.ascontiguousarray(_read(data_dir / "imagenet-samples" / name)[y0:y1, x0:x1])


def _samples_dir(data_dir: str | os.PathLike[str]) -> Path:
    d = Path(data_dir)
    return d if (d / "labels.json").exists() else d / "imagenet-samples"


# ---------------------------------------------------------------------------------------------
# states


@dataclass(frozen=True)
class _Scene:
    background: F32  # the frame without door or parcel, float32 BGR
    door_closed: F32  # the door as it looks closed (w, h of the door)
    panel: Image  # the bare wooden panel, uint8 (for the swung-open view)
    interior: F32  # what the opening shows
    parcel: Image  # the parcel texture
    parcel_mask: Image  # its outline, 255 inside
    door: tuple[int, int, int, int]  # in frame pixels


def _scene(data_dir: Path, size: Size) -> _Scene:
    samples = data_dir / "imagenet-samples"
    bg = cv2.resize(_read(samples / SCENE), (FRAME_W, FRAME_H), interpolation=cv2.INTER_CUBIC)
    rx, ry, _ = REGION
    dx, dy, dw, dh = DOOR[size]
    door = (rx + dx, ry + dy, dw, dh)
    panel = np.asarray(cv2.resize(_crop(data_dir, PANEL), (dw, dh), interpolation=cv2.INTER_AREA), np.uint8)
    closed = panel.astype(np.float32)
    j = max(2, dw // 40)  # the dark joint around the door
    for edge in (np.s_[:j], np.s_[-j:]):
        closed[edge] *= 0.35
        closed[:, edge] *= 0.35
    hw, hh = max(3, dw // 18), max(8, dh // 5)  # the handle: brushed metal, near the free (right) edge
    hx, hy = dw - j - 2 * hw - max(2, dw // 30), (dh - hh) // 2
    handle = np.linspace(150.0, 210.0, hh, dtype=np.float32)[:, None, None] * np.ones((1, hw, 3), np.float32)
    closed[hy : hy + hh, hx : hx + hw] = handle
    closed[hy + hh : hy + hh + 2, hx : hx + hw] *= 0.5  # its shadow
    inside = cv2.resize(_crop(data_dir, INTERIOR), (dw, dh), interpolation=cv2.INTER_AREA).astype(np.float32)
    shade = np.linspace(0.45, 0.25, dh, dtype=np.float32)[:, None, None]  # darker towards the bottom
    inside = inside * shade
    inside[:, : max(2, dw // 25)] *= 0.5  # the hinge side's inner wall in shadow
    return _Scene(
        background=bg.astype(np.float32),
        door_closed=closed,
        panel=panel,
        interior=inside,
        parcel=_crop(data_dir, PARCEL),
        parcel_mask=_outline_mask(),
        door=door,
    )


def _outline_mask() -> Image:
    x0, y0, x1, y1 = PARCEL[1]
    m = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(m, [np.array([(x - x0, y - y0) for x, y in PARCEL_OUTLINE], np.int32)], (255,))
    return m


def _paste_warped(
    frame: F32, texture: Image, matrix: npt.NDArray[np.float64], gain: float = 1.0, mask: Image | None = None
) -> Image:
    """Composite `texture` (where `mask`, default everywhere) onto `frame` through a 3x3 perspective
    `matrix` (texture -> frame), edges antialiased; in place. Returns the warped mask."""
    h, w = texture.shape[:2]
    warped = cv2.warpPerspective(texture, matrix, (FRAME_W, FRAME_H), flags=cv2.INTER_LINEAR)
    full = np.full((h, w), 255, np.uint8) if mask is None else mask
    mask = np.asarray(cv2.warpPerspective(full, matrix, (FRAME_W, FRAME_H), flags=cv2.INTER_LINEAR), np.uint8)
    a = mask.astype(np.float32)[:, :, None] * np.float32(1.0 / 255.0)
    frame *= 1.0 - a
    frame += a * (warped.astype(np.float32) * np.float32(gain))
    return mask


def _shadow(frame: F32, cx: float, cy: float, ax: float, ay: float, angle: float, depth: float) -> None:
    m = np.zeros((FRAME_H, FRAME_W), np.uint8)
    cv2.ellipse(m, (round(cx), round(cy)), (max(1, round(ax)), max(1, round(ay))), angle, 0, 360, (255,), -1)
    m = np.asarray(cv2.GaussianBlur(m, (0, 0), sigmaX=max(2.0, 0.25 * min(ax, ay))), np.uint8)
    frame *= 1.0 - np.float32(depth) * (m.astype(np.float32)[:, :, None] * np.float32(1.0 / 255.0))


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _render(sc: _Scene, size: Size, state: str, rng: np.random.Generator) -> tuple[Image, float, dict[str, Any]]:
    """One realisation of `state`: the region crop, the area fraction that makes the state, parameters."""
    frame = sc.background.copy()
    x, y, w, h = sc.door
    rx, ry, side = REGION
    region_area = float(side * side)
    area = w * h / region_area
    p: dict[str, Any] = {"state": state}
    if state == "door_open":
        frame[y : y + h, x : x + w] = sc.interior
        theta = math.radians(_u(rng, 40.0, 80.0))
        width = w * math.cos(theta)  # the panel seen at an angle: foreshortened ...
        grow = 0.5 * h * 0.18 * math.sin(theta)  # ... its free edge nearer the camera, so taller
        src = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
        dst = np.array([[x, y], [x - width, y - grow], [x - width, y + h + grow], [x, y + h]], np.float32)
        _paste_warped(frame, sc.panel, cv2.getPerspectiveTransform(src, dst).astype(np.float64), gain=0.8)
        p["open_deg"] = round(math.degrees(theta), 1)
    else:
        frame[y : y + h, x : x + w] = sc.door_closed
    if state == "parcel":
        lo, hi = PARCEL_AREA[size]
        fill = float(np.count_nonzero(sc.parcel_mask)) / sc.parcel_mask.size  # the outline in its box
        want = _u(rng, lo, hi) * region_area / fill  # the box around the outline
        aspect = _u(rng, 1.2, 1.5)
        pw, ph = math.sqrt(want * aspect), math.sqrt(want / aspect)
        jit = PARCEL_JITTER[size]
        # nominal place: on the floor, in front of the door, right of the centre (small) or centred (large)
        cx0 = side / 2 if size == "large" else 0.62 * side
        bottom0 = side - 10 if size == "large" else side - 28
        cx = rx + min(max(cx0 + _u(rng, -jit, jit), pw / 2 + 2), side - pw / 2 - 2)
        bottom = ry + min(bottom0 + _u(rng, -jit, jit), side - 2)
        cy = bottom - ph / 2
        rot = _u(rng, -5.0, 5.0)
        _shadow(frame, cx + 0.08 * pw, bottom - 0.05 * ph, 0.55 * pw, 0.12 * ph + 3, rot, 0.45)
        th, tw = sc.parcel.shape[:2]
        s = np.array([[pw / tw, 0, 0], [0, ph / th, 0], [0, 0, 1]], np.float64)
        c, si = math.cos(math.radians(rot)), math.sin(math.radians(rot))
        r = np.array([[c, -si, 0], [si, c, 0], [0, 0, 1]], np.float64)
        t0 = np.array([[1, 0, -pw / 2], [0, 1, -ph / 2], [0, 0, 1]], np.float64)
        t1 = np.array([[1, 0, cx], [0, 1, cy], [0, 0, 1]], np.float64)
        m = t1 @ r @ t0 @ s
        mask = _paste_warped(frame, sc.parcel, m, gain=_u(rng, 0.9, 1.1), mask=sc.parcel_mask)
        # the parcel's area inside the region (it may overhang the region's edge)
        area = float(np.count_nonzero(mask[ry : ry + side, rx : rx + side] >= 128)) / region_area
        p.update(parcel_area=round(area, 3), parcel_rot=round(rot, 1))
    if rng.random() < 0.25:  # a passing shadow, in every class alike
        _shadow(
            frame,
            rx + _u(rng, 0.1, 0.9) * side,
            ry + _u(rng, 0.1, 0.9) * side,
            _u(rng, 0.15, 0.4) * side,
            _u(rng, 0.3, 0.7) * side,
            _u(rng, -40.0, 40.0),
            _u(rng, 0.2, 0.45),
        )
        p["shadow"] = True
    # light across the frame, contrast and brightness
    g, phi = _u(rng, 0.0, 0.15), _u(rng, 0.0, 2.0 * math.pi)
    xs = (np.arange(FRAME_W, dtype=np.float32) - FRAME_W / 2) / np.float32(FRAME_W / 2)
    ys = (np.arange(FRAME_H, dtype=np.float32) - FRAME_H / 2) / np.float32(FRAME_H / 2)
    light = np.float32(1.0) + np.float32(g * math.cos(phi)) * xs[None, :] + np.float32(g * math.sin(phi)) * ys[:, None]
    frame *= light[:, :, None]
    contrast, gain, offset = _u(rng, 0.75, 1.25), _u(rng, 0.65, 1.35), _u(rng, -15.0, 15.0)
    frame = (frame - np.float32(128.0)) * np.float32(contrast * gain) + np.float32(128.0 * gain + offset)
    img = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    gamma = _u(rng, 0.75, 1.35)
    lut = np.array([round(255.0 * math.pow(i / 255.0, gamma)) for i in range(256)], np.uint8)
    img = np.asarray(cv2.LUT(img, lut), np.uint8)
    grey = bool(rng.random() < 0.2)
    if grey:  # night mode: desaturated and dark
        dark = _u(rng, 0.3, 0.5)
        one = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        lut_dark = np.array([round(i * dark) for i in range(256)], np.uint8)
        img = np.asarray(cv2.cvtColor(cv2.LUT(one, lut_dark), cv2.COLOR_GRAY2BGR), np.uint8)
        p["dark"] = round(dark, 2)
    if rng.random() < 0.3:
        sigma = _u(rng, 0.5, 1.1)
        img = np.asarray(cv2.GaussianBlur(img, (0, 0), sigmaX=sigma), np.uint8)
        p["blur"] = round(sigma, 2)
    noise_sigma = _u(rng, 4.0, 10.0) if grey else _u(rng, 1.5, 6.0)
    shape = (FRAME_H, FRAME_W, 1) if grey else (FRAME_H, FRAME_W, 3)
    noise = np.rint(rng.standard_normal(shape, dtype=np.float32) * np.float32(noise_sigma)).astype(np.int16)
    img = np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    quality = int(rng.integers(30, 96))
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    img = np.asarray(cv2.imdecode(buf, cv2.IMREAD_COLOR), np.uint8)
    sx, sy = (int(v) for v in rng.integers(-4, 5, size=2))
    crop = np.ascontiguousarray(img[ry + sy : ry + sy + side, rx + sx : rx + sx + side])
    p.update(
        gain=round(gain, 2),
        contrast=round(contrast, 2),
        gamma=round(gamma, 2),
        grey=grey,
        noise=round(noise_sigma, 1),
        quality=quality,
        shift=(sx, sy),
    )
    return crop, area, p


def states_task(data_dir: str | os.PathLike[str], size: Size, n_per_class: int, seed: int) -> Task:
    """The fixed-camera states task (module docstring): `n_per_class` realisations of each of
    `empty`, `parcel` and `door_open`, in class order, drawn from `seed` (same seed, same images)."""
    if size not in DOOR:
        raise ValueError(f"size must be 'large' or 'small', got {size!r}")
    if n_per_class < 1:
        raise ValueError("n_per_class must be >= 1")
    d = Path(data_dir)
    sc = _scene(d, size)
    images: list[Image] = []
    labels: list[int] = []
    areas: list[float] = []
    params: list[dict[str, Any]] = []
    for ci, state in enumerate(STATES):
        # one stream per class: a class's examples do not depend on how many the others have
        rng = np.random.default_rng([seed, ci, 0 if size == "large" else 1])
        for _ in range(n_per_class):
            crop, area, p = _render(sc, size, state, rng)
            images.append(crop)
            labels.append(ci)
            areas.append(area)
            params.append(p)
    return Task(f"states-{size}", list(STATES), images, np.asarray(labels, np.int64), np.asarray(areas), [], params)


# ---------------------------------------------------------------------------------------------
# coarse categories


def coarse_task(data_dir: str | os.PathLike[str]) -> Task:
    """The ImageNet samples in five coarse categories by class index (module docstring: 293 photos).
    `data_dir` is the shared data folder or its imagenet-samples folder."""
    d = _samples_dir(data_dir)
    entries = json.loads((d / "labels.json").read_text(encoding="utf-8"))
    classes = list(COARSE)
    images: list[Image] = []
    labels: list[int] = []
    files: list[str] = []
    for ci, name in enumerate(classes):
        for e in entries:
            k = int(e["class_index"])
            if k in COARSE_EXCLUDED or not any(lo <= k <= hi for lo, hi in COARSE[name]):
                continue
            images.append(_read(d / e["file"]))
            labels.append(ci)
            files.append(str(e["file"]))
    return Task("coarse", classes, images, np.asarray(labels, np.int64), np.full(len(images), np.nan), files)


# ---------------------------------------------------------------------------------------------
# splits and folders


def splits(y: Sequence[int] | Ints, k: int, repeats: int, seed: int) -> Iterator[tuple[Ints, Ints]]:
    """`repeats` random (train, test) index splits: k examples of every class in train (sorted), all
    the others in test. Raises ValueError when a class has k or fewer (nothing left to test)."""
    labels = np.asarray(y, np.int64)
    classes = np.unique(labels)
    counts = np.bincount(labels)
    short = [int(c) for c in classes if counts[c] <= k]
    if short:
        raise ValueError(f"classes {short} have {k} or fewer examples: nothing left to test at k={k}")
    rng = np.random.default_rng(seed)
    for _ in range(repeats):
        train = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:k] for c in classes]))
        test = np.setdiff1d(np.arange(labels.size), train)
        yield train.astype(np.int64), test.astype(np.int64)


def write_folders(
    task: Task, examples_dir: str | os.PathLike[str], test_dir: str | os.PathLike[str], k: int, seed: int
) -> list[tuple[Path, str]]:
    """`examples_dir/<class>/<i>.jpg` (k a class, JPEG quality 95: what a user's camera stores) and
    every other image as `test_dir/<i>.png` (lossless, so two machines read the very same pixels).
    The split is the first of `splits(task.labels, k, 1, seed)`. Returns the test images with their
    true class, in file order."""
    ex, te = Path(examples_dir), Path(test_dir)
    train, test = next(splits(task.labels, k, 1, seed))
    for c in task.classes:
        (ex / c).mkdir(parents=True, exist_ok=True)
    te.mkdir(parents=True, exist_ok=True)
    for i in train:
        cls = task.classes[int(task.labels[i])]
        _write(ex / cls / f"{int(i):04d}.jpg", task.images[int(i)], [cv2.IMWRITE_JPEG_QUALITY, 95])
    out: list[tuple[Path, str]] = []
    for i in test:
        path = te / f"{int(i):04d}.png"
        _write(path, task.images[int(i)], [cv2.IMWRITE_PNG_COMPRESSION, 3])
        out.append((path, task.classes[int(task.labels[i])]))
    return out


def _write(path: Path, img: Image, params: list[int]) -> None:
    if not cv2.imwrite(str(path), img, params):
        raise OSError(f"cannot write {path}")


def fingerprint(task: Task) -> str:
    """SHA-256 over labels and pixels: equal on two machines when they generated the same task."""
    h = hashlib.sha256(task.labels.tobytes())
    for img in task.images:
        h.update(np.ascontiguousarray(img).tobytes())
    return h.hexdigest()
