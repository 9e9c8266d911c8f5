"""/metrics in the Prometheus text exposition format (0.0.4), written by hand in one small module
(prometheus_client is a dependency the device does not need): each Status counter one sample,
`*_total` as counters, the rest gauges, the static labels as one `edge_resnet_info` gauge.
tests/test_prometheus.py reads the output back with prometheus_client's own parser."""

from __future__ import annotations

import math
import re
from typing import Any

from ..observation import Status

_METRIC_NAME_BAD = re.compile(r"[^a-zA-Z0-9_:]")
METRIC_HELP = {
    "healthy": "1 when frames are flowing and the pipeline is healthy, else 0.",
    "http_stream_clients": "Open /stream.mjpg connections.",
    "http_frames_encoded_total": "Annotated frames JPEG-encoded by the HTTP overlay.",
    "http_requests_total": "HTTP requests served by the overlay.",
}


def metric_name(name: str) -> str:
    """A Prometheus metric name for a counter key: `edge_resnet_` prefix, invalid characters as `_`."""
    n = _METRIC_NAME_BAD.sub("_", name)
    return "edge_resnet_" + n


def _label_value(v: Any) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() or abs(v) >= 1e15 else str(int(v))


def prometheus_text(status: Status, extra: dict[str, float] | None = None) -> str:
    """Prometheus text exposition (0.0.4): `*_total` keys are counters, the rest gauges; status.labels
    become one `edge_resnet_info` gauge with those labels."""
    lines: list[str] = []
    values: dict[str, float] = {"healthy": 1.0 if status.healthy else 0.0}
    values.update(status.counters)
    values.update(extra or {})
    seen: set[str] = set()
    for key, value in values.items():
        name = metric_name(key)
        if name in seen:
            continue
        seen.add(name)
        kind = "counter" if name.endswith("_total") else "gauge"
        help_text = METRIC_HELP.get(key, key.replace("_", " ") + " (from the edge-resnet pipeline).")
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        try:
            lines.append(f"{name} {_number(float(value))}")
        except (TypeError, ValueError):
            lines.append(f"{name} NaN")
    scalars = {k: v for k, v in status.labels.items() if isinstance(v, str | int | float | bool)}
    if scalars:
        pairs = ",".join(f'{_METRIC_NAME_BAD.sub("_", str(k))}="{_label_value(v)}"' for k, v in sorted(scalars.items()))
        lines.append("# HELP edge_resnet_info Model, device and runtime of this daemon (value is always 1).")
        lines.append("# TYPE edge_resnet_info gauge")
        lines.append(f"edge_resnet_info{{{pairs}}} 1")
    return "\n".join(lines) + "\n"
