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

The first upload of a network to the sensor takes minutes, and the camera's frames come without
tensors meanwhile. Until the first tensor after opening, `warming_up()` tells the capture thread so
(it then does not reopen the camera, which would start the upload again): with the upload's progress
where picamera2 can read it (`fw_progress` not NONE: debugfs as root, or its sudo scripts), as long as
the byte count moves; else, for up to `upload_grace_s` (300 s) after opening, as long as frames keep
coming. After that the capture thread's watchdog applies as to any camera.
"""

from __future__ import annotations

import importlib
import logging
import time
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

UPLOAD_GRACE_S = 300.0  # progress not readable: frames without tensors count as life this long after opening
PROGRESS_EVERY_S = 1.0  # picamera2 reads the progress with two subprocesses: at most once a second
UPLOAD_STALLED_S = 60.0  # an upload whose byte count has not moved for this long is not in progress
FW_NETWORK_STAGE = 2  # picamera2.devices.imx500.imx500.FW_NETWORK_STAGE, if that module does not say


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

    def __init__(self, cfg: Picamera2Source, read_timeout_s: float = 2.0,
                 upload_grace_s: float = UPLOAD_GRACE_S) -> None:
        self.cfg = cfg
        self.read_timeout_s = read_timeout_s
        self.upload_grace_s = upload_grace_s
        self.description = f"picamera2 camera {cfg.camera}"
        self._cam: Any = None
        self._job: Any = None
        self._stream = "lores" if cfg.use_lores else "main"
        self._imx: Any = None  # picamera2's IMX500 in mode "imx500"
        self.without_tensor = 0  # frames the sensor sent without its network's outputs (skipped)
        self.dnn_ms: float | None = None  # the last frame's on-sensor network time
        self.dsp_ms: float | None = None
        self._opened_mono = 0.0  # when the IMX500 took the network (its upload began)
        self._tensor_seen = False  # a frame with the network's outputs came since opening
        self._untensored: tuple[float, float] | None = None  # (first, last) frame without them since opening
        self._network_stage = FW_NETWORK_STAGE
        self._progress: tuple[int, int] = (0, 0)  # the upload's (bytes, total) last read
        self._progress_moved = 0.0
        self._checked = -PROGRESS_EVERY_S  # when warming_up() last looked
        self._waiting: str | None = None  # what it found
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
        try:
            self._network_stage = int(importlib.import_module("picamera2.devices.imx500.imx500").FW_NETWORK_STAGE)
        except (ImportError, AttributeError, TypeError, ValueError):
            self._network_stage = FW_NETWORK_STAGE
        self._crop_like_calibration()
        self._opened_mono = time.monotonic()
        self._tensor_seen, self._untensored, self._waiting = False, None, None
        self._progress, self._checked = (0, 0), -PROGRESS_EVERY_S
        return int(getattr(self._imx, "camera_num", self.cfg.camera))

    def _crop_like_calibration(self) -> None:
        """Left alone, the sensor squeezes its whole 4:3 image into the square input tensor; the network was
        calibrated and evaluated on centre crops of undistorted photos. picamera2's classification demo
        crops the sensor to the input's aspect ratio for the same reason (set_inference_aspect_ratio)."""
        size = getattr(self._imx, "config", {}).get("input_tensor_size")
        if size and hasattr(self._imx, "set_inference_aspect_ratio"):
            self._imx.set_inference_aspect_ratio(tuple(size))
            log.info("IMX500 input: the centre %d:%d of the sensor", *size)

    def warming_up(self) -> str | None:
        """Why no frame comes yet while the IMX500 receives its network (read by the capture thread,
        whose watchdog then waits); None once a frame brought the network's outputs, and in mode "camera"."""
        if self._imx is None or self._tensor_seen:
            return None
        now = time.monotonic()
        if now - self._checked >= PROGRESS_EVERY_S:
            self._checked = now
            self._waiting = self._upload_progress(now) or self._upload_grace(now)
        return self._waiting

    def _upload_progress(self, now: float) -> str | None:
        """"uploading the network to the IMX500: 43 % (1.2 of 2.8 MB)" while picamera2 reads the upload in
        progress and its byte count moves; None when it cannot read it (fw_progress NONE) or it is not under way."""
        imx = self._imx
        kind = getattr(imx, "fw_progress", None)
        if kind is None or int(kind) == 0:  # FwProgressType.NONE, or a picamera2 without it
            return None
        try:
            done, total = (int(v) for v in imx.get_fw_upload_progress(self._network_stage))
        except Exception as e:  # debugfs or its sudo script failed this time
            log.debug("IMX500 upload progress unreadable: %s", e)
            return None
        if total <= 0 or done >= total:
            return None
        if (done, total) != self._progress:
            self._progress, self._progress_moved = (done, total), now
        elif now - self._progress_moved > UPLOAD_STALLED_S:
            return None
        mb = f"{done / 1e6:.1f} of {total / 1e6:.1f} MB"
        return f"uploading the network to the IMX500: {100 * done // total} % ({mb})"

    def _upload_grace(self, now: float) -> str | None:
        """Without readable progress: frames that keep coming without tensors, up to upload_grace_s after opening."""
        if self._untensored is None or now - self._opened_mono > self.upload_grace_s:
            return None
        first, last = self._untensored
        if now - last > self.read_timeout_s + PROGRESS_EVERY_S:  # no frames at all: that is the watchdog's case
            return None
        return (f"waiting for the IMX500 to load its network: frames without its outputs for {now - first:.0f} s "
                f"(upload progress not readable here; allowed up to {self.upload_grace_s:.0f} s after opening)")

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
            now = time.monotonic()
            self._untensored = (self._untensored[0] if self._untensored else now, now)
            return None
        self._tensor_seen = True
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
