"""Frame sources, one module per kind, all behind `edge_resnet.capture.FrameSource`.

Which module serves a `[source] type` is `config.SOURCES` (one explicit dict); `make_source`
imports it only when that source is used (picamera2 only on a Pi).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import SOURCES, resolve

if TYPE_CHECKING:
    from ..capture import FrameSource
    from ..sourceconfig import SourceCommon


def make_source(cfg: SourceCommon) -> FrameSource:
    """The FrameSource for a `[source]` table, by its registry entry's factory."""
    source: FrameSource = resolve(SOURCES[cfg.type].factory)(cfg)
    return source
