"""The values that flow down the daemon: frames in, observations out, plus a status snapshot."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .classify import Prediction


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


@dataclass(frozen=True)
class Status:
    """Pipeline health and counters, read by /healthz, /metrics, MQTT state and systemd STATUS=."""

    healthy: bool
    reason: str  # "ok" or what is wrong and the fix, e.g. "camera lost: no frame for 5.0 s"
    counters: dict[str, float] = field(default_factory=dict)  # name -> value, Prometheus-friendly names
    labels: dict[str, Any] = field(default_factory=dict)  # model, device, delegate ...
