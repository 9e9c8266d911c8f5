"""Frame sources, one module per kind, all behind `edge_resnet.capture.FrameSource`.

`make_source(config)` is the explicit table from a `[source]` type to its class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..capture import FrameSource
    from ..config import SourceConfig


def make_source(cfg: SourceConfig) -> FrameSource:
    """The FrameSource for a `[source]` table (modules import lazily: picamera2 only on a Pi)."""
    if cfg.type == "folder":
        from .folder import FolderFrames

        return FolderFrames(cfg.path, interval_s=cfg.interval_s, loop=cfg.loop)
    if cfg.type == "picamera2":
        from .picamera2 import Picamera2Frames

        return Picamera2Frames(cfg)
    from .opencv import OpenCvFrames

    return OpenCvFrames.from_config(cfg)
