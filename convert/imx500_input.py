"""What the IMX500 feeds a network, and a network made to take exactly that.

On the AI Camera the sensor's own ISP scales the image to the input tensor and writes its 8-bit RGB
pixels into the network's input; there is no CPU step where edge-resnet's preprocessing could run.
`imx500-package` sets that ISP stage from the converter's `dnnParams.xml` (input tensor `format` and
`scale`) and its own defaults: per channel a gain of 1.0 and an offset of 0, pixels clipped to 0..255
(its log: `kscale[c] = 1024` (1.0 in Q10), `kshift[c] = 0`, `clip_min 0 clip_max 255`), so for an
unsigned 8-bit input the network receives the pixel value p itself, meaning p * scale. packerOut.zip
carries no mean or standard deviation. A network quantized on already-normalised input (what MCT
makes of an ImageNet classifier: signed, scale 1/32 or 1/128) would get what those defaults make of
the pixels (p, or p - 128 for a signed input: picamera2's defaults for the reverse mapping) where it
expects (p - mean) / std: close for an "inception" [-1, 1] model by coincidence, wrong for a
torchvision one.

So the network is made to take what the sensor gives: its input is the RGB pixel / 256 (MCT quantizes
a 0..255/256 input as unsigned 8 bits with scale 1/256, so q = p exactly, the packager's identity),
and a first per-channel multiply-add (and a channel swap for BGR models) computes the model's own
`(p - mean) / std`. Calibration and evaluation feed it the same pixels, cropped and resized as the
TFLite path does, and `check_input_tensor` reads the converter's dnnParams.xml to make sure the
input really is unsigned 8-bit at 1/256 before the zip is written under a deployable name.
"""

from __future__ import annotations

import importlib
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_resnet.errors import ModelError
from edge_resnet.preprocess import PreprocessSpec, crop_resize

SENSOR_SCALE = 1.0 / 256.0  # the input tensor's scale: q = pixel, value = pixel / 256
SENSOR_FORMAT = "unsigned"
SENSOR_ORDER = "RGB"  # imx500-package's default input format (input_format.json: RGB)


def sensor_affine(spec: PreprocessSpec) -> tuple[tuple[int, int, int], npt.NDArray[np.float32],
                                                  npt.NDArray[np.float32]]:
    """(channel index into the sensor's RGB, a, b) so that the model's channel c gets
    `x[idx[c]] * a[c] + b[c]` = (pixel - mean[c]) / std[c] when x = pixel / 256."""
    idx = (0, 1, 2) if spec.channel_order == "RGB" else (2, 1, 0)
    std = np.asarray(spec.std, np.float64)
    mean = np.asarray(spec.mean, np.float64)
    return idx, (256.0 / std).astype(np.float32), (-mean / std).astype(np.float32)


def sensor_pixels(images: npt.NDArray[np.uint8], spec: PreprocessSpec) -> npt.NDArray[np.float32]:
    """Cropped, resized images (N, H, W, 3) in the model's channel order -> (N, 3, H, W) RGB / 256:
    what the sensor writes into the network's input."""
    rgb = images if spec.channel_order == "RGB" else images[..., ::-1]
    x = rgb.astype(np.float32) * np.float32(SENSOR_SCALE)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def sensor_input_of(frame_bgr: npt.NDArray[np.uint8], spec: PreprocessSpec,
                    hw: tuple[int, int]) -> npt.NDArray[np.float32]:
    """A BGR photo -> the batch-of-one sensor input, cropped and resized as calibration did."""
    resized = crop_resize(frame_bgr, hw, spec.crop_fraction, spec.interpolation)
    x = resized[..., ::-1].astype(np.float32) * np.float32(SENSOR_SCALE)  # BGR -> RGB, as the sensor writes
    return np.ascontiguousarray(x.transpose(2, 0, 1)[np.newaxis])


def with_sensor_input(net: Any, spec: PreprocessSpec) -> Any:
    """`net` (takes the normalised NCHW tensor) behind the multiply-add that makes it take sensor pixels."""
    torch: Any = importlib.import_module("torch")  # the [imx500] extra, imported only on this path
    idx, a, b = sensor_affine(spec)
    module: Any = torch.nn.Module

    class SensorInput(module):  # type: ignore[misc]  # torch is untyped here
        """x = pixel / 256 in RGB -> (pixel - mean) / std in the model's order -> the network."""

        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.swap = idx != (0, 1, 2)
            self.register_buffer("a", torch.from_numpy(a.reshape(1, 3, 1, 1).copy()))
            self.register_buffer("b", torch.from_numpy(b.reshape(1, 3, 1, 1).copy()))

        def forward(self, x: Any) -> Any:
            if self.swap:
                x = torch.flip(x, dims=[1])
            return self.net(x * self.a + self.b)

    return SensorInput().eval()


@dataclass(frozen=True)
class InputTensor:
    """The network's input as Sony's converter wrote it in dnnParams.xml."""

    format: str  # "signed" / "unsigned"
    scale: float
    shift: int
    dims: tuple[int, ...]  # dimension sizes in ordinal order (3, H, W)

    def describe(self) -> str:
        return f"{self.format} 8-bit, scale {self.scale:g}, shape {'x'.join(map(str, self.dims))}"


def read_input_tensor(packer_zip: Path) -> InputTensor:
    """The first network's input tensor from packerOut.zip's dnnParams.xml."""
    try:
        with zipfile.ZipFile(packer_zip) as z:
            root = ET.fromstring(z.read("dnnParams.xml"))
    except (OSError, KeyError, zipfile.BadZipFile, ET.ParseError) as e:
        raise ModelError(f"{packer_zip.name} has no readable dnnParams.xml ({e}); the converter's output "
                         "is incomplete: convert again") from None
    node = root.find("./networks/network/inputTensors/inputTensor")
    if node is None:
        raise ModelError(f"{packer_zip.name}: dnnParams.xml names no input tensor; convert again")
    dims = sorted(node.findall("./dimensions/dimension"), key=lambda d: int(d.get("ordinal", "0")))
    try:
        return InputTensor(node.get("format", "?").lower(), float(node.get("scale", "nan")),
                           int(node.get("shift", "0")), tuple(int(d.get("size", "0")) for d in dims))
    except ValueError as e:
        raise ModelError(f"{packer_zip.name}: dnnParams.xml's input tensor is unreadable ({e})") from None


def check_input_tensor(t: InputTensor, name: str) -> None:
    """Refuse a network whose input is not what the sensor writes (pixel values, unsigned, 1/256)."""
    if t.format != SENSOR_FORMAT or abs(t.scale - SENSOR_SCALE) > 1e-9 or t.shift != 0:
        raise ModelError(
            f"{name}: the network's input is {t.describe()}, but the IMX500 writes 8-bit pixels "
            f"({SENSOR_FORMAT}, scale {SENSOR_SCALE:g}); it would classify wrongly on the sensor. This is a bug "
            "in edge-resnet's IMX500 path: please report it with the conversion's log"
        )


def metadata(t: InputTensor, spec: PreprocessSpec) -> dict[str, Any]:
    """What the device and a reader of `<name>_imx500.json` need to know about the input."""
    return {
        "sensor_writes": f"{SENSOR_ORDER} 8-bit pixels, {SENSOR_FORMAT}, scale {SENSOR_SCALE:g} (imx500-package "
                         "defaults: gain 1, offset 0)",
        "normalisation": f"in the network: (pixel - {list(spec.mean)}) / {list(spec.std)}, "
                         f"{spec.channel_order} order",
        "input_tensor": {"format": t.format, "scale": t.scale, "shift": t.shift, "dims": list(t.dims)},
        "package_with": "imx500-package -i <name>_imx500.zip -o DIR (RGB, the default input format)",
        "crop_fraction": spec.crop_fraction,
    }
