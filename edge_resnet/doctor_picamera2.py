"""`doctor` rows for Raspberry Pi cameras through picamera2 (`[source] type = "picamera2"`) and, for the
AI Camera (`mode = "imx500"`), each
thing picamera2's `IMX500(network.rpk)` needs, in the order it needs them, so a missing package,
firmware, cable or network is named before the daemon starts a minutes-long upload to the sensor.

Paths (`/lib/firmware`, `/sys`, `/dev`) are parameters so tests can point the checks at a fake tree.
"""

from __future__ import annotations

import glob
import importlib
import os
from pathlib import Path
from typing import Any

from .doctor import Check, Result, picamera2_cameras
from .errors import EdgeResnetError

FIRMWARE = ("/lib/firmware/imx500_loader.fpk", "/lib/firmware/imx500_firmware.fpk")  # from imx500-all
APT_FIX = "sudo apt install imx500-all python3-picamera2"
CABLE_FIX = ("check the AI Camera's ribbon cable (both ends, contacts the right way round), then "
             "`rpicam-hello --list-cameras` should list an imx500")
PACKAGE_FIX = ("make it on the Pi: `imx500-package -i <name>_imx500.zip -o DIR`, copy DIR/network.rpk and set "
               "[source] network")
SAME_CONVERSION = "convert and package again from the same conversion"


def probe_picamera2_source(source: Any, timeout: float) -> list[Check]:
    """libcamera's cameras; for the AI Camera (mode "imx500") also what picamera2's IMX500 needs."""
    rows, cams = picamera2_cameras(timeout=max(timeout, 10.0))
    if source is not None and getattr(source, "mode", "camera") == "imx500":
        rows += probe_imx500(source, cams)
    return rows


def probe_imx500(source: Any, cameras: list[dict[str, Any]] | None, firmware: tuple[str, ...] = FIRMWARE,
                 sys_root: str = "/sys", dev: str = "/dev") -> list[Check]:
    """Every row for mode "imx500": picamera2's IMX500 support, the sensor's firmware, the sensor's
    V4L2 node, the camera in libcamera's list (`cameras`, None when it could not be read), the network."""
    rows = check_imx500_support()
    rows += check_imx500_firmware(firmware)
    rows += check_imx500_sensor(sys_root, dev)
    if cameras is not None:
        rows += check_imx500_camera(cameras)
    rows += check_imx500_network(source.network)
    return rows


def check_imx500_support() -> list[Check]:
    """picamera2's IMX500 class imports (python3-picamera2 with the dependencies imx500-all brings)."""
    try:  # on a Pi this imports libcamera, libarchive, OpenEXR, jsonschema...: any of them may be missing
        importlib.import_module("picamera2.devices").IMX500  # noqa: B018
    except (ImportError, AttributeError, OSError) as e:
        return [Check("imx500 support", Result.FAIL, f"picamera2's IMX500 support does not import ({e})", APT_FIX)]
    return [Check("imx500 support", Result.OK, "picamera2.devices.IMX500 imports")]


def check_imx500_firmware(paths: tuple[str, ...] = FIRMWARE) -> list[Check]:
    """The sensor's loader and main firmware, uploaded before any network."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        return [Check("imx500 firmware", Result.FAIL, f"missing: {', '.join(missing)}",
                      "sudo apt install imx500-all (the sensor's firmware), then reboot")]
    unreadable = [p for p in paths if not os.access(p, os.R_OK)]
    if unreadable:
        return [Check("imx500 firmware", Result.FAIL, f"not readable: {', '.join(unreadable)}",
                      "sudo apt install --reinstall imx500-all")]
    sizes = ", ".join(f"{os.path.basename(p)} ({os.path.getsize(p) / 1e3:,.0f} kB)" for p in paths)
    return [Check("imx500 firmware", Result.OK, sizes)]


def find_imx500_subdev(sys_root: str = "/sys") -> str | None:
    """The v4l-subdevN bound to the imx500 driver, found as picamera2's IMX500 finds it."""
    for link in sorted(glob.glob(os.path.join(sys_root, "class/video4linux/v4l-subdev*/device/driver/module")),
                       key=lambda p: (len(p), p)):
        if os.path.islink(link) and "imx500" in os.readlink(link):
            return Path(link).parents[2].name
    return None


def check_imx500_sensor(sys_root: str = "/sys", dev: str = "/dev") -> list[Check]:
    """The kernel's imx500 driver owns a V4L2 sub-device that this user can open read-write (picamera2
    writes the network's file descriptor to it)."""
    node = find_imx500_subdev(sys_root)
    if node is None:
        return [Check("imx500 sensor", Result.FAIL, "no V4L2 sub-device is bound to the imx500 driver",
                      f"{CABLE_FIX}; without camera_auto_detect=1, add dtoverlay=imx500 to /boot/firmware/config.txt "
                      "and reboot")]
    path = os.path.join(dev, node)
    if not os.access(path, os.R_OK | os.W_OK):
        return [Check("imx500 sensor", Result.FAIL, f"{path} (imx500 driver) is not readable and writable by this user",
                      "add the user to the `video` group (the service has it via SupplementaryGroups=video)")]
    return [Check("imx500 sensor", Result.OK, f"{path}: the imx500 driver's sub-device, read-write")]


def check_imx500_camera(cameras: list[dict[str, Any]]) -> list[Check]:
    """libcamera lists a camera whose Model is imx500 (picamera2 opens that one)."""
    found = [c for c in cameras if c.get("Model") == "imx500"]
    if not found:
        models = ", ".join(str(c.get("Model", "?")) for c in cameras) or "none"
        return [Check("imx500 camera", Result.FAIL, f"libcamera lists no imx500 (cameras: {models})", CABLE_FIX)]
    c = found[0]
    return [Check("imx500 camera", Result.OK, f"camera {c.get('Num', '?')}: imx500 ({c.get('Id', '?')})")]


def check_imx500_network(network: str) -> list[Check]:
    """[source] network is a package picamera2 can read; its input size and format."""
    from .rpk import read_rpk

    if not os.path.exists(network):
        return [Check("imx500 network", Result.FAIL, f"{network} not found", PACKAGE_FIX)]
    try:
        info = read_rpk(network)
    except EdgeResnetError as e:
        what, _, fix = str(e).partition("; ")
        return [Check("imx500 network", Result.FAIL, what, fix)]
    return [Check("imx500 network", Result.OK, f"{network}: {info.describe()}")]


def sensor_hw(meta: dict[str, Any]) -> tuple[int, int] | None:
    """(height, width) of the model input that `convert --target imx500` recorded, or None."""
    inp = meta.get("input")
    if not isinstance(inp, dict):
        return None
    shape, layout = inp.get("shape"), inp.get("layout", "NCHW")
    if not isinstance(shape, list) or len(shape) != 4:
        return None
    h, w = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
    return int(h), int(w)


def check_model_and_source(model: str | None, source: Any) -> list[Check]:
    """The model and the source belong together: an IMX500 network's metadata with the AI Camera's
    source, and that metadata and network.rpk from the same conversion (input size, outputs)."""
    from .imx500 import is_sensor_model, read_metadata
    from .rpk import read_rpk

    on_sensor = getattr(source, "type", None) == "picamera2" and getattr(source, "mode", "") == "imx500"
    if not model:
        return []
    if not is_sensor_model(model):
        if on_sensor:
            return [Check("imx500 model", Result.WARN,
                          f"{model} runs on the CPU; the sensor's network outputs are not used",
                          "set [model] path to the <name>_imx500.json that `convert --target imx500` wrote")]
        return []
    if source is None:
        return []
    if not on_sensor:
        return [Check("imx500 model", Result.FAIL, f"{Path(model).name} runs on the IMX500 sensor, but the source "
                      f"is {source.type}", '[source] type = "picamera2", mode = "imx500", network = DIR/network.rpk')]
    try:
        meta = read_metadata(model)
        info = read_rpk(source.network)
    except EdgeResnetError:
        return []  # the model and network rows say what is wrong
    m, n = Path(model).name, Path(source.network).name
    hw = sensor_hw(meta)
    if hw is not None and hw != (info.height, info.width):
        return [Check("imx500 model", Result.FAIL,
                      f"{m} describes a {hw[1]}x{hw[0]} input, {n} takes {info.width}x{info.height}",
                      f"{SAME_CONVERSION}: `convert --target imx500`, then `imx500-package` on its zip")]
    outputs = int(meta.get("num_outputs", 0))
    if len(info.output_sizes) == 1 and outputs and info.output_sizes[0] != outputs:
        return [Check("imx500 model", Result.FAIL,
                      f"{m} describes {outputs} outputs, {n} gives {info.output_sizes[0]}",
                      f"{SAME_CONVERSION}: `convert --target imx500`, then `imx500-package` on its zip")]
    size = f"{hw[1]}x{hw[0]} input" if hw is not None else "input size not recorded"
    return [Check("imx500 model", Result.OK, f"{m} and {n} agree: {size}, {outputs} outputs")]
