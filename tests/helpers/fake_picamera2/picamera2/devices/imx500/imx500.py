"""The fake `picamera2.devices.imx500.imx500`: an IMX500 that takes a network file, uploads it to the
"sensor" for a while, and reads outputs from request metadata the way picamera2's
`devices/imx500/imx500.py` does (get_outputs, get_kpi_info, camera_num, fw_progress,
get_fw_upload_progress, FW_NETWORK_STAGE).

The upload is driven by the camera script (EDGE_RESNET_FAKE_IMX500, see picamera2/__init__.py):
"upload": {"seconds": 4, "bytes": 2800000, "progress": "direct" | "indirect" | "none"}. It starts when
an IMX500 is made, as on the sensor: making a new one (a reopen) starts it again. Until it is done the
camera's frames carry no tensor. "opens_file": a path to which each IMX500 made appends a line, so a
test can count how often the source was opened.
"""

from __future__ import annotations

import os
import struct
import time
from enum import IntEnum
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["FW_LOADER_STAGE", "FW_MAIN_STAGE", "FW_NETWORK_STAGE", "IMX500", "network_ready"]

FW_LOADER_STAGE = 0
FW_MAIN_STAGE = 1
FW_NETWORK_STAGE = 2

_upload: dict[str, float] = {}  # the one sensor's upload: started (monotonic), seconds, bytes


def network_ready() -> bool:
    """The network finished uploading (read by the fake camera: frames carry tensors only then)."""
    if not _upload:
        return True
    return time.monotonic() - _upload["started"] >= _upload["seconds"]


class IMX500:
    class FwProgressType(IntEnum):
        NONE = 0
        DIRECT = 1
        INDIRECT = 2

    def __init__(self, network_file: str, camera_id: str = "") -> None:
        from picamera2 import script

        if not os.path.isfile(network_file):
            raise RuntimeError(f"Firmware file {network_file} does not exist.")
        self.network_file = network_file
        self.camera_num = 0
        # picamera2 fills config from the package's network_info; the fake reads it with our reader
        from edge_resnet.rpk import read_rpk

        try:
            info = read_rpk(network_file)
            self.config: dict[str, Any] = {"network_file": network_file,
                                           "input_tensor_size": (info.width, info.height)}
        except Exception:  # not a package: picamera2 leaves the input size out too
            self.config = {"network_file": network_file}
        self.inference_aspect_ratio: tuple[int, int] | None = None  # None: the full sensor, squeezed
        s = script()
        up = s.get("upload") or {}
        self.fw_progress = IMX500.FwProgressType[str(up.get("progress", "direct")).upper()]
        _upload.clear()
        if up:
            _upload.update(started=time.monotonic(), seconds=float(up["seconds"]), bytes=float(up["bytes"]))
        if s.get("opens_file"):
            with open(s["opens_file"], "a", encoding="utf-8") as f:
                f.write(f"{time.monotonic():.3f} {network_file}\n")

    def set_inference_aspect_ratio(self, aspect_ratio: tuple[int, int]) -> None:
        """picamera2: the largest centred crop of the full sensor (4056x3040) with this aspect ratio feeds
        the network, instead of the whole sensor squeezed into the input tensor."""
        self.inference_aspect_ratio = (int(aspect_ratio[0]), int(aspect_ratio[1]))

    def get_fw_upload_progress(self, stage_req: int) -> tuple[int, int]:
        """(current, total) bytes of the upload in `stage_req`; (0, 0) in another stage. Like picamera2's,
        it reads debugfs files that exist only when fw_progress is not NONE."""
        assert self.fw_progress != IMX500.FwProgressType.NONE  # picamera2's _fw_progress_read asserts so
        if not _upload or stage_req != FW_NETWORK_STAGE:
            return (0, 0)
        size = int(_upload["bytes"])
        done = (time.monotonic() - _upload["started"]) / _upload["seconds"]
        return (min(int(size * done), size), size)

    def get_outputs(self, metadata: dict[str, Any], add_batch: bool = False) -> list[npt.NDArray[Any]] | None:
        output_tensor = metadata.get("CnnOutputTensor")
        if not output_tensor:
            return None
        out = np.fromiter(output_tensor, dtype=np.float32)
        return [np.expand_dims(out, 0) if add_batch else out]

    @staticmethod
    def get_kpi_info(metadata: dict[str, Any]) -> tuple[float, float] | None:
        kpi_info = metadata.get("CnnKpiInfo")
        if kpi_info is None:
            return None
        dnn_runtime, dsp_runtime = struct.unpack("II", bytes(kpi_info))
        return dnn_runtime / 1000, dsp_runtime / 1000
