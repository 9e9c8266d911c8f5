"""The fake `picamera2.devices`: only what edge-resnet uses, laid out as picamera2's own package."""

from .imx500 import IMX500

__all__ = ["IMX500"]
