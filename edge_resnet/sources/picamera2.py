"""Raspberry Pi camera through picamera2 (libcamera). Imported only when `[source] type = "picamera2"`.

The daemon classifies the small `lores` stream: a 320x240 frame is all a 224x224 model needs
and costs the ISP nothing. Two details that trip people up:
- picamera2's "RGB888" format is named after libcamera/DRM fourccs: the array is **BGR** in
  memory, which is what OpenCV and this project expect, so no channel swap is done.
- On a Pi 4 and older the lores stream can only be YUV420 (I420): it is converted here to BGR.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import numpy.typing as npt

from ..capture import open_error
from ..errors import DependencyError

if TYPE_CHECKING:
    from ..sourceconfig import Picamera2Source

log = logging.getLogger(__name__)


def i420_to_bgr(arr: npt.NDArray[np.uint8], width: int, height: int) -> npt.NDArray[np.uint8]:
    """A picamera2 YUV420 array (height*3/2 rows of `stride` bytes) -> BGR (height, width, 3)."""
    stride = arr.shape[1]
    if stride != width:  # rows padded to the ISP's alignment: rebuild tight planes
        y = arr[:height, :width]
        flat_u = arr[height : height + height // 4].reshape(-1)
        flat_v = arr[height + height // 4 : height + height // 2].reshape(-1)
        u = flat_u.reshape(height // 2, stride // 2)[:, : width // 2]
        v = flat_v.reshape(height // 2, stride // 2)[:, : width // 2]
        arr = np.concatenate([y.reshape(-1), u.reshape(-1), v.reshape(-1)]).reshape(height * 3 // 2, width)
    return np.asarray(cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_YUV2BGR_I420), dtype=np.uint8)


class Picamera2Frames:
    """picamera2 behind the FrameSource protocol."""

    def __init__(self, cfg: Picamera2Source, read_timeout_s: float = 2.0) -> None:
        self.cfg = cfg
        self.read_timeout_s = read_timeout_s
        self.description = f"picamera2 camera {cfg.camera}"
        self._cam: Any = None
        self._job: Any = None
        self._stream = "lores" if cfg.use_lores else "main"

    def open(self) -> None:
        self.close()
        try:
            mod = importlib.import_module("picamera2")
        except ImportError:
            raise DependencyError(
                "picamera2 is not installed; on Raspberry Pi OS: sudo apt install python3-picamera2 "
                "(and create the venv with --system-site-packages)"
            ) from None
        c = self.cfg
        try:
            cam = mod.Picamera2(camera_num=c.camera)
        except (IndexError, RuntimeError, OSError) as e:
            fix = f"no such camera or it is busy ({e}); check `rpicam-hello --list`"
            raise open_error(self.description, fix) from None
        try:
            streams: dict[str, Any] = {"main": {"size": tuple(c.main_size), "format": "RGB888"}}
            if c.use_lores:
                streams["lores"] = {"size": tuple(c.lores_size), "format": c.lores_format}
            controls = {"FrameRate": float(c.fps)} if c.fps else {}
            config = cam.create_video_configuration(**streams, controls=controls, buffer_count=4)
            cam.configure(config)
            cam.start()
        except Exception as e:
            cam.close()
            raise open_error(self.description, f"it cannot be configured ({e}); try smaller sizes") from None
        self._cam = cam
        log.info("%s open: %s stream %s", self.description, self._stream, c.lores_size if c.use_lores else c.main_size)

    def read(self) -> npt.NDArray[np.uint8] | None:
        cam = self._cam
        if cam is None:
            raise OSError(f"{self.description} is not open")
        try:
            if self._job is None:  # one outstanding request at a time: a late frame is waited for again
                self._job = cam.capture_array(self._stream, wait=False)
            arr = self._job.get_result(timeout=self.read_timeout_s)
            self._job = None
        except TimeoutError:
            return None  # the capture thread's watchdog decides when this becomes "camera lost"
        except TypeError:  # an old picamera2 without wait=False: blocking capture
            self._job = None
            arr = cam.capture_array(self._stream)
        if arr is None:
            return None
        a = np.asarray(arr, dtype=np.uint8)
        if self._stream == "lores" and self.cfg.lores_format == "YUV420":
            w, h = self.cfg.lores_size
            return i420_to_bgr(a, w, h)
        if a.ndim == 3 and a.shape[2] == 4:  # XRGB8888 is BGRA in memory
            a = a[:, :, :3]
        return np.ascontiguousarray(a)  # "RGB888" is BGR in memory: no swap

    def close(self) -> None:
        self._job = None
        if self._cam is not None:
            cam, self._cam = self._cam, None
            try:
                cam.stop()
            finally:
                cam.close()
