"""The overlay's timeline: the last label changes, with their times and a small thumbnail each.

The entries are the daemon's own events: an Observation with `changed` set is exactly what the MQTT
sink publishes on `events`. A thumbnail is encoded when the change happens (label changes are rare:
the smoother holds a label for several frames), so a page poll never touches a full frame and the
history costs a few KB, not a few full frames.
"""

from __future__ import annotations

import base64
import collections
import threading
from typing import Any

import cv2

from ..annotate import first_synonym
from ..observation import Observation

TIMELINE_LEN = 8
THUMB_WIDTH = 120


class Timeline:
    """A bounded, thread-safe list of label changes, newest first; `seq` counts every change seen."""

    def __init__(self, length: int = TIMELINE_LEN, thumb_width: int = THUMB_WIDTH) -> None:
        self.thumb_width = thumb_width
        self._entries: collections.deque[dict[str, Any]] = collections.deque(maxlen=length)
        self._lock = threading.Lock()
        self.seq = 0

    def add(self, obs: Observation) -> None:
        """Record `obs` if its label changed (pipeline thread; one small JPEG per change)."""
        if not obs.changed:
            return
        where = f"{obs.region}: " if obs.region else ""
        entry = {
            **({"region": obs.region} if obs.region else {}),
            "label": where + first_synonym(obs.label.label),
            "full_label": obs.label.label,
            "class_index": obs.label.class_index,
            "score": round(float(obs.label.score), 4),
            "at": round(obs.classified_at, 3),
            "frame_seq": obs.frame.seq,
            "thumbnail": self._thumbnail(obs),
        }
        with self._lock:
            self.seq += 1
            entry["seq"] = self.seq
            self._entries.appendleft(entry)

    def _thumbnail(self, obs: Observation) -> str | None:
        """A small JPEG of the frame, or of the region's own crop."""
        img = obs.frame.image
        if obs.roi is not None:
            x0, y0, x1, y1 = obs.roi
            crop = img[max(0, y0) : y1, max(0, x0) : x1]
            img = crop if crop.size else img
        h, w = img.shape[:2]
        if w == 0 or h == 0:
            return None
        size = (self.thumb_width, max(1, round(h * self.thumb_width / w)))
        small = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        ok, jpg = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 70])
        return "data:image/jpeg;base64," + base64.b64encode(jpg.tobytes()).decode() if ok else None

    def document(self) -> dict[str, Any]:
        """What /api/events returns: {"seq": n, "events": [newest first]}."""
        with self._lock:
            return {"seq": self.seq, "events": list(self._entries)}
