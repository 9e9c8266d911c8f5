"""A stand-in for picamera2 with the Raspberry Pi AI Camera (IMX500), importable by a child process
(PYTHONPATH=tests/helpers/fake_picamera2): the real package exists only on a Pi.

What the camera sees and what its sensor's network says come from the JSON file named by
EDGE_RESNET_FAKE_IMX500: {"image": PNG path (BGR as OpenCV reads it), "num_outputs": N,
"sequence": [class index, or null for a frame without a tensor, ...] (cycled), "dnn_ms": 6.5,
"dsp_ms": 1.2, "fps": 20, "cameras": [what global_camera_info lists; default: one imx500],
"upload": {...}, "opens_file": path} ("upload" and "opens_file": devices/imx500/imx500.py). Metadata is
shaped as libcamera gives it: "CnnOutputTensor" (floats), "CnnKpiInfo" (two uint32 microseconds), and
the devices.IMX500 methods read it as picamera2's do. While the IMX500's network is still uploading,
every frame comes without a tensor, as on the sensor.
"""

from __future__ import annotations

import json
import os
import struct
import time
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

__all__ = ["Picamera2"]


IMX500_CAMERA = {"Model": "imx500", "Location": 2, "Rotation": 0, "Num": 0,
                 "Id": "/base/axi/pcie@120000/rp1/i2c@88000/imx500@1a"}


def script() -> dict[str, Any]:
    """The test's script; empty without EDGE_RESNET_FAKE_IMX500 (e.g. `doctor` only lists cameras)."""
    path = os.environ.get("EDGE_RESNET_FAKE_IMX500")
    if not path:
        return {}
    with open(path, encoding="utf-8") as f:
        d: dict[str, Any] = json.load(f)
    return d


class _Request:
    def __init__(self, cam: Picamera2, index: int) -> None:
        s = cam.script
        self.cam = cam
        from .devices.imx500.imx500 import network_ready

        cls = s["sequence"][index % len(s["sequence"])] if network_ready() else None
        self.metadata: dict[str, Any] = {"SensorTimestamp": index}
        if cls is not None:
            logits = np.full(int(s["num_outputs"]), -2.0, np.float32)
            logits[int(cls)] = 6.0
            self.metadata["CnnOutputTensor"] = [float(v) for v in logits]
            self.metadata["CnnKpiInfo"] = struct.pack("II", int(s["dnn_ms"] * 1000), int(s["dsp_ms"] * 1000))
        self.released = False

    def get_metadata(self) -> dict[str, Any]:
        return self.metadata

    def make_array(self, name: str) -> npt.NDArray[Any]:
        fmt = self.cam.cfg[name]["format"]
        w, h = self.cam.cfg[name]["size"]
        bgr = cv2.resize(self.cam.image, (w, h), interpolation=cv2.INTER_AREA)
        if fmt == "YUV420":
            return np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420))
        return bgr  # libcamera's RGB888 is B,G,R in memory

    def release(self) -> None:
        self.released = True


class _Job:
    def __init__(self, request: _Request) -> None:
        self.request = request

    def get_result(self, timeout: float | None = None) -> _Request:
        return self.request


class Picamera2:
    @staticmethod
    def global_camera_info() -> list[dict[str, Any]]:
        cams: list[dict[str, Any]] = script().get("cameras", [IMX500_CAMERA])
        return cams

    def __init__(self, camera_num: int = 0) -> None:
        if camera_num != 0:
            raise IndexError("list index out of range")
        self.script = script()
        self.image = cv2.imread(self.script["image"], cv2.IMREAD_COLOR)
        self.cfg: dict[str, Any] = {}
        self.n = 0
        self.last = 0.0

    def create_video_configuration(self, **kw: Any) -> dict[str, Any]:
        return kw

    def configure(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg

    def start(self) -> None:
        self.last = time.monotonic()

    def capture_request(self, wait: bool | None = None) -> Any:
        pause = 1.0 / float(self.script.get("fps", 20)) - (time.monotonic() - self.last)
        if pause > 0:
            time.sleep(pause)  # a camera delivers at its frame rate
        self.last = time.monotonic()
        req = _Request(self, self.n)
        self.n += 1
        return _Job(req) if wait is False else req

    def stop(self) -> None:
        pass

    def close(self) -> None:
        pass
