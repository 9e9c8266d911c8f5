"""Raspberry Pi camera through picamera2 (libcamera). Imported only when `[source] type = "picamera2"`.

The daemon classifies the small `lores` stream: a 320x240 frame is all a 224x224 model needs
and costs the ISP nothing. Two details that trip people up:
- picamera2's "RGB888" format is named after libcamera/DRM fourccs: the array is **BGR** in
  memory, which is what OpenCV and this project expect, so no channel swap is done.
- On a Pi 4 and older the lores stream can only be YUV420 (I420): it is converted here to BGR.

`mode = "imx500"` (the Raspberry Pi AI Camera): picamera2's `IMX500(network.rpk)` is made before the
camera (it uploads the network to the sensor), the camera is `Picamera2(imx500.camera_num)`, and each
request gives the frame and, in its metadata, the network's float32 outputs
(`imx500.get_outputs(metadata)`) and KPI times (`get_kpi_info`: DNN and DSP milliseconds). A frame is
handed on as a `SensorFrame` carrying them (edge_resnet/imx500.py); frames without a tensor (while the
network loads, or dropped by the sensor) are skipped and counted (`counters()`, in /metrics).
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import numpy.typing as npt

from ..capture import open_error
from ..errors import ConfigError, DependencyError
from ..imx500 import sensor_frame

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
        self._imx: Any = None  # picamera2's IMX500 in mode "imx500"
        self.without_tensor = 0  # frames the sensor sent without its network's outputs (skipped)
        self.dnn_ms: float | None = None  # the last frame's on-sensor network time
        self.dsp_ms: float | None = None
        if cfg.mode == "imx500":
            self.description = f"picamera2 IMX500 camera ({Path(cfg.network).name})"

    def counters(self) -> dict[str, float]:
        """Added to the pipeline's /metrics counters (mode "imx500" only)."""
        if self.cfg.mode != "imx500":
            return {}
        out = {"imx500_frames_without_tensor_total": float(self.without_tensor)}
        if self.dnn_ms is not None:
            out["imx500_dnn_ms"] = round(self.dnn_ms, 3)
        if self.dsp_ms is not None:
            out["imx500_dsp_ms"] = round(self.dsp_ms, 3)
        return out

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
        camera_num = c.camera
        if c.mode == "imx500":
            camera_num = self._open_imx500()
        try:
            cam = mod.Picamera2(camera_num=camera_num)
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

    def _open_imx500(self) -> int:
        """picamera2's IMX500 with the network, before the camera; returns the camera number to open."""
        network = Path(self.cfg.network)
        if not network.is_file():
            raise ConfigError(f"IMX500 network {network} not found; make it on the Pi with "
                                "`imx500-package -i <name>_imx500.zip -o DIR` and set [source] network")
        try:
            devices = importlib.import_module("picamera2.devices")
        except ImportError:
            raise DependencyError("picamera2 has no IMX500 support here; on Raspberry Pi OS: sudo apt install "
                                  "imx500-all python3-picamera2") from None
        try:
            self._imx = devices.IMX500(str(network))
        except (RuntimeError, OSError) as e:
            raise open_error(self.description, f"the IMX500 cannot take the network ({e}); is the AI Camera "
                             "connected and imx500-all installed?") from None
        return int(getattr(self._imx, "camera_num", self.cfg.camera))

    def read(self) -> npt.NDArray[np.uint8] | None:
        cam = self._cam
        if cam is None:
            raise OSError(f"{self.description} is not open")
        if self._imx is not None:
            return self._read_with_outputs(cam)
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

    def _read_with_outputs(self, cam: Any) -> npt.NDArray[np.uint8] | None:
        """One request: its frame and, from its metadata, the network's outputs and times."""
        try:
            if self._job is None:
                self._job = cam.capture_request(wait=False)
            request = self._job.get_result(timeout=self.read_timeout_s)
            self._job = None
        except TimeoutError:
            return None
        try:
            metadata = request.get_metadata()
            outputs = self._imx.get_outputs(metadata, add_batch=False)
            arr = None if outputs is None else request.make_array(self._stream)
        finally:
            request.release()
        if outputs is None or not len(outputs):
            self.without_tensor += 1
            return None
        kpi = self._imx.get_kpi_info(metadata)
        if kpi is not None:
            self.dnn_ms, self.dsp_ms = float(kpi[0]), float(kpi[1])
        image = self._to_bgr(np.asarray(arr, dtype=np.uint8))
        return sensor_frame(image, np.asarray(outputs[0]), self.dnn_ms or 0.0, self.dsp_ms or 0.0)

    def _to_bgr(self, a: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        if self._stream == "lores" and self.cfg.lores_format == "YUV420":
            w, h = self.cfg.lores_size
            return i420_to_bgr(a, w, h)
        if a.ndim == 3 and a.shape[2] == 4:  # XRGB8888 is BGRA in memory
            a = a[:, :, :3]
        return np.ascontiguousarray(a)  # "RGB888" is BGR in memory: no swap

    def close(self) -> None:
        self._job = None
        self._imx = None
        if self._cam is not None:
            cam, self._cam = self._cam, None
            try:
                cam.stop()
            finally:
                cam.close()
