"""The values that flow down the daemon: frames in, observations out, plus a status snapshot.

A leaf module (numpy only, no engine or sink import), so sinks, smoothing and tests can build
observations without an interpreter; `observation_json` is the one JSON shape every sink publishes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

SCORE_DIGITS = 5  # scores in published JSON: enough to tell close classes apart, short on the wire


class Prediction(NamedTuple):
    """One class: `class_index` counts dataset classes (background slots excluded); score in 0..1."""

    label: str
    class_index: int
    score: float


@dataclass(frozen=True)
class Frame:
    """A captured frame: BGR uint8 (sources convert), its sequence number and capture time."""

    image: npt.NDArray[np.uint8]
    seq: int
    captured_at: float  # time.time(), for people and MQTT payloads
    captured_mono: float  # time.monotonic(), for frame age


@dataclass(frozen=True)
class Observation:
    """One classified frame as sinks see it. `label` is the smoothed label that gets published."""

    frame: Frame
    top_k: list[Prediction]  # this frame's own top-k
    label: Prediction  # smoothed
    changed: bool  # the smoothed label differs from the previous one
    invoke_ms: float
    model: str  # model file name
    classified_at: float  # time.time()
    region: str | None = None  # the [[region]] this observation is about; None: the whole frame (or roi)
    roi: tuple[int, int, int, int] | None = None  # the region's box in the frame (x0, y0, x1, y1)


@dataclass(frozen=True)
class Status:
    """Pipeline health and counters, read by /healthz, /metrics, MQTT state and systemd STATUS=."""

    healthy: bool
    reason: str  # "ok" or what is wrong and the fix, e.g. "camera lost: no frame for 5.0 s"
    counters: dict[str, float] = field(default_factory=dict)  # name -> value, Prometheus-friendly names
    labels: dict[str, Any] = field(default_factory=dict)  # model, device, delegate ...


def prediction_json(p: Prediction) -> dict[str, Any]:
    """One top-k entry as every sink publishes it."""
    return {"label": p.label, "class_index": p.class_index, "score": round(float(p.score), SCORE_DIGITS)}


def observation_json(obs: Observation | None) -> dict[str, Any]:
    """The one observation-to-JSON shape (MQTT state and events, /api/state, stdout lines): the smoothed
    label, this frame's top-k, frame and timing fields. None (nothing classified yet) gives the same
    keys with null values, so consumers see one schema. Sinks add only their own context (device_id,
    health, fps, ...) on top."""
    if obs is None:
        return {
            "label": None,
            "score": None,
            "class_index": None,
            "top_k": [],
            "frame_seq": None,
            "captured_at": None,
            "classified_at": None,
            "model": None,
            "invoke_ms": None,
        }
    region = {"region": obs.region} if obs.region is not None else {}
    return {
        **region,
        "label": obs.label.label,
        "score": round(float(obs.label.score), SCORE_DIGITS),
        "class_index": obs.label.class_index,
        "top_k": [prediction_json(p) for p in obs.top_k],
        "frame_seq": obs.frame.seq,
        "captured_at": round(obs.frame.captured_at, 3),
        "classified_at": round(obs.classified_at, 3),
        "model": obs.model,
        "invoke_ms": round(obs.invoke_ms, 2),
    }
