"""The one preprocessing path shared by calibration, evaluation and the daemon.

A frame (any size, uint8, BGR as OpenCV delivers it or RGB) becomes the model's input tensor in
two pure steps: `crop_resize` (geometry) and `to_input` (colour order, normalisation, dtype and
layout). Both are vectorised; `prepare` chains them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt

from .errors import ConfigError
from .prepspec import INTERPOLATIONS as INTERPOLATIONS
from .prepspec import PRESETS as PRESETS
from .prepspec import ChannelOrder as ChannelOrder
from .prepspec import Interpolation as Interpolation
from .prepspec import PreprocessSpec as PreprocessSpec
from .prepspec import preset as preset

_CV2_INTERP = {
    "area_fast": cv2.INTER_AREA,  # after a bilinear step to 2x the output: see crop_resize
    "area": cv2.INTER_AREA,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "nearest": cv2.INTER_NEAREST,
}


@dataclass(frozen=True)
class TensorInfo:
    """What a caller needs of a model tensor; `scale == 0` means not quantized."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    scale: float = 0.0
    zero_point: int = 0

    @property
    def quantized(self) -> bool:
        return self.scale > 0 and np.issubdtype(self.dtype, np.integer)

    @property
    def layout(self) -> Literal["NHWC", "NCHW"]:
        if len(self.shape) == 4 and self.shape[1] in (1, 3) and self.shape[3] not in (1, 3):
            return "NCHW"
        return "NHWC"

    @property
    def hw(self) -> tuple[int, int]:
        """Input height and width in pixels."""
        if len(self.shape) != 4:
            raise ConfigError(f"input tensor {self.name!r} has shape {self.shape}; an image model needs 4-D")
        if self.layout == "NCHW":
            return int(self.shape[2]), int(self.shape[3])
        return int(self.shape[1]), int(self.shape[2])


Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels


def crop_box(frame_h: int, frame_w: int, out_h: int, out_w: int, crop_fraction: float) -> Box:
    """Source rectangle that "resize shorter side to out/crop_fraction, centre crop out" keeps."""
    scale = max(out_h / frame_h, out_w / frame_w) / crop_fraction
    src_w = min(frame_w, out_w / scale)
    src_h = min(frame_h, out_h / scale)
    x0 = round((frame_w - src_w) / 2)
    y0 = round((frame_h - src_h) / 2)
    return x0, y0, x0 + max(1, round(src_w)), y0 + max(1, round(src_h))


def crop_resize(
    frame: npt.NDArray[np.uint8],
    out_hw: tuple[int, int],
    crop_fraction: float = 0.875,
    interpolation: Interpolation = "area_fast",
    roi: Box | None = None,
) -> npt.NDArray[np.uint8]:
    """Centre crop (within `roi` if given) and resize in one cv2 call; channel order unchanged.

    Cropping in source coordinates before resizing touches only the pixels that survive. OpenCV's
    INTER_AREA is fast only at integer factors (about 2 ms for the 630x630 crop of a 720p frame at
    a factor of 2.8), so "area_fast" resizes a region that is not an integer multiple of the output
    bilinearly to exactly twice the output and then box-filters by 2: 0.2-0.6 pixel levels mean
    difference from "area", 2-4x faster (bench/preprocess_options.py). Integer factors (a 256-px
    ImageNet sample's 224 crop) take INTER_AREA's own fast path and give identical pixels.
    """
    if frame.ndim == 2:
        frame = np.asarray(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR), dtype=np.uint8)
    elif frame.ndim != 3 or frame.shape[2] not in (3, 4):
        raise ConfigError(f"expected an HxWx3 image, got shape {frame.shape}")
    if frame.shape[2] == 4:
        frame = frame[:, :, :3]
    if frame.dtype != np.uint8:
        raise ConfigError(f"expected a uint8 image, got {frame.dtype}")
    if roi is not None:
        x0, y0, x1, y1 = roi
        frame = frame[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)]
        if frame.size == 0:
            raise ConfigError(f"region of interest {roi} lies outside the frame")
    out_h, out_w = out_hw
    x0, y0, x1, y1 = crop_box(frame.shape[0], frame.shape[1], out_h, out_w, crop_fraction)
    region = frame[y0:y1, x0:x1]
    interp = _CV2_INTERP[interpolation]
    if region.shape[0] < out_h or region.shape[1] < out_w:
        interp = cv2.INTER_LINEAR if interp == cv2.INTER_AREA else interp  # AREA is for shrinking
    elif interpolation == "area_fast" and (region.shape[0] % out_h or region.shape[1] % out_w):
        region = np.asarray(cv2.resize(region, (2 * out_w, 2 * out_h), interpolation=cv2.INTER_LINEAR), np.uint8)
    out = cv2.resize(region, (out_w, out_h), interpolation=interp)
    return np.ascontiguousarray(out)


def affine(spec: PreprocessSpec, tensor: TensorInfo) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Per-channel (a, b) so that the stored input value is `pixel * a + b` (model channel order)."""
    mean = np.asarray(spec.mean, np.float64)
    std = np.asarray(spec.std, np.float64)
    a: npt.NDArray[np.float64] = 1.0 / (std * tensor.scale) if tensor.quantized else 1.0 / std
    b: npt.NDArray[np.float64] = (tensor.zero_point if tensor.quantized else 0.0) - mean * a
    return a.astype(np.float32), b.astype(np.float32)


def to_input(
    image: npt.NDArray[np.uint8],
    image_order: ChannelOrder,
    spec: PreprocessSpec,
    tensor: TensorInfo,
) -> npt.NDArray[Any]:
    """HxWx3 uint8 image already at model size -> batch-of-one tensor of the model's dtype/layout."""
    if image_order != spec.channel_order:
        image = np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), dtype=np.uint8)  # 20x faster than [..., ::-1]
    a, b = affine(spec, tensor)
    dtype = np.dtype(tensor.dtype)
    out: npt.NDArray[Any]
    if dtype == np.uint8 and np.allclose(a, 1.0, atol=0.01) and np.allclose(b, 0.0, atol=1.0):
        out = np.ascontiguousarray(image)  # normalisation folded into the quantization: raw pixels
    elif dtype == np.int8 and np.allclose(a, 1.0, atol=0.01) and np.allclose(b, -128.0, atol=1.0):
        out = (np.ascontiguousarray(image) ^ np.uint8(0x80)).view(np.int8)
    elif dtype in (np.uint8, np.int8):
        out = _lookup(image, a, b, dtype)
    else:
        values = image.astype(np.float32) * a + b
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            out = np.clip(np.rint(values), info.min, info.max).astype(dtype)
        else:
            out = values.astype(dtype)
    if tensor.layout == "NCHW":
        out = out.transpose(2, 0, 1)
    return np.ascontiguousarray(out[np.newaxis])


def _lookup(
    image: npt.NDArray[np.uint8], a: npt.NDArray[np.float32], b: npt.NDArray[np.float32], dtype: np.dtype[Any]
) -> npt.NDArray[Any]:
    """8-bit inputs through a per-channel table (cv2.LUT): the same values as the float formula,
    computed once per 256 pixel values instead of once per pixel."""
    info = np.iinfo(dtype)
    pixels = np.arange(256, dtype=np.float32)[:, None]
    table = np.clip(np.rint(pixels * a[None, :] + b[None, :]), info.min, info.max).astype(dtype)
    lut = np.ascontiguousarray(table.view(np.uint8).reshape(256, 1, 3))
    out = np.asarray(cv2.LUT(np.ascontiguousarray(image), lut), dtype=np.uint8)
    return out.view(dtype)


def prepare(
    frame: npt.NDArray[np.uint8],
    spec: PreprocessSpec,
    tensor: TensorInfo,
    frame_order: ChannelOrder = "BGR",
    roi: Box | None = None,
) -> npt.NDArray[Any]:
    """Camera frame -> model input tensor; the single entry point every caller uses."""
    resized = crop_resize(frame, tensor.hw, spec.crop_fraction, spec.interpolation, roi)
    return to_input(resized, frame_order, spec, tensor)
