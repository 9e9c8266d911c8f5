"""Optional annotated video file, written on its own thread from a bounded queue."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError


@dataclass
class VideoConfig:
    """`[video]` in the config file: where to write the annotated video and at what frame rate."""

    path: str
    fps: float = 10.0

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError("[video] path: must be a file name, e.g. /var/lib/edge-resnet/annotated.avi")
        suffix = Path(self.path).suffix.lower()
        if suffix not in (".avi", ".mp4", ".mkv"):
            raise ConfigError(f"[video] path: {self.path!r} unsupported extension; use .avi, .mp4 or .mkv")
        if not 0 < self.fps <= 120:
            raise ConfigError(f"[video] fps: {self.fps} is out of range; use a value in (0, 120], e.g. 10")
