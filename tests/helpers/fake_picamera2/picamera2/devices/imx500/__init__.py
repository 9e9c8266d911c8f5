"""The fake `picamera2.devices.imx500` package, as picamera2 lays it out (the class in imx500.py)."""

from .imx500 import IMX500

__all__ = ["IMX500"]
