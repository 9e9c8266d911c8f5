"""Where a model runs, named once: the `device` values a user types and the Edge TPU runtime's
library per OS (as pycoral's one dict). Pure, so config, engine and doctor share it."""

from __future__ import annotations

import platform
from typing import Literal

Device = Literal["cpu", "edgetpu", "auto"]
DEVICES: tuple[Device, ...] = ("cpu", "edgetpu", "auto")

EDGETPU_SHARED_LIB = {
    "Linux": "libedgetpu.so.1",
    "Darwin": "libedgetpu.1.dylib",
    "Windows": "edgetpu.dll",
}


def edgetpu_library() -> str:
    """The Edge TPU runtime's shared library on this OS (libedgetpu1-std installs it on Linux)."""
    return EDGETPU_SHARED_LIB.get(platform.system(), EDGETPU_SHARED_LIB["Linux"])
