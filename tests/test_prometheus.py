"""/metrics text read back by prometheus_client's own parser (the format's reference implementation),
from a synthetic Status: no server, no model, no data."""

from __future__ import annotations

import math

import pytest

from edge_resnet.observation import Status
from edge_resnet.sinks.prometheus import prometheus_text

parser = pytest.importorskip("prometheus_client.parser")


def families(text: str) -> dict[str, tuple[str, dict[str, float], dict[str, str]]]:
    """family name -> (type, {sample name: value}, labels of the last sample)."""
    out = {}
    for fam in parser.text_string_to_metric_families(text):
        out[fam.name] = (fam.type, {s.name: s.value for s in fam.samples}, fam.samples[-1].labels)
    return out


def test_counters_gauges_info_and_odd_values_parse() -> None:
    st = Status(
        False,
        "camera lost",
        counters={"frames_total": 120, "inference_fps": 14.5, "frame_age_ms": float("nan"), "big": 1e20},
        labels={"model": 'mobile"net\\v2\n', "device": "cpu", "skipped": [1, 2]},
    )
    fams = families(prometheus_text(st, {"http_requests_total": 3, "queue-depth": float("inf")}))
    assert fams["edge_resnet_frames"] == ("counter", {"edge_resnet_frames_total": 120.0}, {})
    assert fams["edge_resnet_http_requests"][1] == {"edge_resnet_http_requests_total": 3.0}
    assert fams["edge_resnet_inference_fps"][:2] == ("gauge", {"edge_resnet_inference_fps": 14.5})
    assert fams["edge_resnet_healthy"][1] == {"edge_resnet_healthy": 0.0}
    assert math.isnan(fams["edge_resnet_frame_age_ms"][1]["edge_resnet_frame_age_ms"])
    assert fams["edge_resnet_queue_depth"][1] == {"edge_resnet_queue_depth": math.inf}
    assert fams["edge_resnet_big"][1] == {"edge_resnet_big": 1e20}
    kind, values, labels = fams["edge_resnet_info"]
    assert (kind, values) == ("gauge", {"edge_resnet_info": 1.0})
    assert labels == {"model": 'mobile"net\\v2\n', "device": "cpu"}  # escaped and read back exactly


def test_duplicate_keys_give_one_family() -> None:
    text = prometheus_text(Status(True, "ok", counters={"frames_total": 1}), {"frames_total": 2})
    assert [f.name for f in parser.text_string_to_metric_families(text)].count("edge_resnet_frames") == 1
    assert text.endswith("\n") and "edge_resnet_info" not in text
