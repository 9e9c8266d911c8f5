"""The fake `picamera2.devices.IMX500`: takes a network file and reads outputs from request metadata
the way picamera2's `devices/imx500/imx500.py` does (get_outputs, get_kpi_info, camera_num)."""

from __future__ import annotations

import os
import struct
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["IMX500"]


class IMX500:
    def __init__(self, network_file: str, camera_id: str = "") -> None:
        if not os.path.isfile(network_file):
            raise RuntimeError(f"Firmware file {network_file} does not exist.")
        self.network_file = network_file
        self.camera_num = 0

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
