"""The snapshot a label change publishes for Home Assistant's `image` entity: the annotated frame
(the whole frame, or a region's crop) as one JPEG small enough for a broker and a phone, and the
pacing that keeps it at most one a second a topic. Pure apart from OpenCV's encoder."""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from ...annotate import annotate
from ...observation import Observation

MAX_BYTES = 100_000  # what one snapshot may weigh (retained on the broker, shown on a dashboard)
MIN_INTERVAL_S = 1.0  # at most one snapshot a second on each topic
QUALITIES = (85, 70, 55, 40)  # tried in turn; then the picture is made smaller
SHRINK = 0.75  # each step down in size
MIN_SIDE = 64  # never smaller than this on its shorter side


def snapshot_image(obs: Observation) -> npt.NDArray[np.uint8]:
    """The annotated picture of an observation: a region's own crop (its box in the frame) with its
    label, or the whole frame with its top-k."""
    img = obs.frame.image
    if obs.region is not None and obs.roi is not None:
        x0, y0, x1, y1 = obs.roi
        crop = img[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)]
        if crop.size:
            img = crop
    return annotate(img, obs.top_k, obs.label, None, obs.invoke_ms)


def encode_jpeg(img: npt.NDArray[np.uint8], max_bytes: int = MAX_BYTES) -> bytes:
    """`img` as a JPEG of at most `max_bytes`: lower quality first, then smaller, until it fits."""
    while True:
        for q in QUALITIES:
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])
            if ok and buf.size <= max_bytes:
                return buf.tobytes()
        h, w = img.shape[:2]
        if min(h, w) * SHRINK < MIN_SIDE:
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, QUALITIES[-1]])
            return buf.tobytes()  # a picture this small cannot be over the limit in practice
        size = (round(w * SHRINK), round(h * SHRINK))
        img = np.asarray(cv2.resize(img, size, interpolation=cv2.INTER_AREA), np.uint8)


def snapshot_jpeg(obs: Observation, max_bytes: int = MAX_BYTES) -> bytes:
    return encode_jpeg(snapshot_image(obs), max_bytes)


class Pacer:
    """The newest picture waiting for each topic, sent once that topic's last one is `every` seconds
    old: a burst of label changes gives the last change's picture, never more than one a second."""

    def __init__(self, every: float = MIN_INTERVAL_S) -> None:
        self.every = every
        self._waiting: dict[str, Observation] = {}
        self._sent: dict[str, float] = {}

    def offer(self, topic: str, obs: Observation) -> None:
        self._waiting[topic] = obs

    def due(self, now: float) -> list[tuple[str, Observation]]:
        """The (topic, observation) pairs to send now; they leave the waiting list."""
        out = [(t, o) for t, o in self._waiting.items() if now - self._sent.get(t, -1e9) >= self.every]
        for t, _ in out:
            del self._waiting[t]
            self._sent[t] = now
        return out
