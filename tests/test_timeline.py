"""Issue 14 case 10 without a browser: label shortening on the video overlay, and the timeline of label
changes behind /api/events."""

from __future__ import annotations

import json
import time
import urllib.request

import cv2
import numpy as np
import pytest

from edge_resnet.annotate import FONT, _scale, annotate, first_synonym, fit_text
from edge_resnet.observation import Prediction, Status
from edge_resnet.sinkconfig import HttpConfig
from edge_resnet.sinks.http import HttpSink
from edge_resnet.sinks.timeline import Timeline
from tests.helpers.observations import Classified, observation, synthetic_samples

SHARK = "great white shark, white shark, man-eater, man-eating shark, Carcharodon carcharias"


def test_first_synonym_and_word_boundary_fit() -> None:
    assert first_synonym(SHARK) == "great white shark"
    assert first_synonym("macaw") == "macaw"
    scale, thick, _ = _scale(480)
    width = cv2.getTextSize("great white", FONT, scale, thick)[0][0] + 40
    cut = fit_text("great white shark", width, scale, thick)
    assert cut == "great white..." or cut == "great..."
    assert cv2.getTextSize(cut, FONT, scale, thick)[0][0] <= width
    assert fit_text("tench", 1000, scale, thick) == "tench"


def test_video_overlay_draws_the_short_label_not_the_synonym_list() -> None:
    """The drawn block is as wide as "great white shark  98.8%", not the 82-character label cut mid-word."""
    frame = np.full((480, 640, 3), 255, np.uint8)
    out = annotate(frame, [Prediction(SHARK, 2, 0.988)])
    dark = np.all(out < 100, axis=2)  # the darkened text box
    cols = np.where(dark.any(axis=0))[0]
    scale, thick, _ = _scale(480)
    want = cv2.getTextSize("great white shark  98.8%", FONT, scale, thick)[0][0]
    assert abs(int(cols.max() - cols.min()) - want) < 40, (cols.max() - cols.min(), want)


@pytest.fixture(scope="module")
def photos() -> list[Classified]:
    return synthetic_samples(3)


def test_timeline_keeps_the_last_changes_newest_first(photos: list[Classified]) -> None:
    tl = Timeline(length=2)
    for seq, (c, changed) in enumerate([(photos[0], True), (photos[0], False), (photos[1], True),
                                        (photos[2], True)], start=1):
        tl.add(observation(c, seq, changed))
    doc = tl.document()
    assert doc["seq"] == 3 and [e["frame_seq"] for e in doc["events"]] == [4, 3]  # bounded: the oldest went
    e = doc["events"][0]
    assert e["label"] == first_synonym(photos[2].top_k[0].label) and e["full_label"] == photos[2].top_k[0].label
    jpg = cv2.imdecode(np.frombuffer(__import__("base64").b64decode(e["thumbnail"].split(",", 1)[1]), np.uint8),
                       cv2.IMREAD_COLOR)
    assert jpg is not None and jpg.shape[1] == 120


def test_api_events_serves_the_timeline(photos: list[Classified]) -> None:
    sink = HttpSink(HttpConfig(listen="127.0.0.1:0"), lambda: Status(True, "ok"))
    sink.start()
    try:
        end = time.monotonic() + 5
        while sink.bound_port == 0:
            assert time.monotonic() < end
            time.sleep(0.02)
        for seq, c in enumerate(photos, start=1):
            sink.publish(observation(c, seq, changed=True))
        with urllib.request.urlopen(sink.url + "api/events", timeout=5) as r:
            doc = json.loads(r.read())
        with urllib.request.urlopen(sink.url + "api/state", timeout=5) as r:
            state = json.loads(r.read())
    finally:
        sink.stop()
    assert doc["seq"] == 3 == state["timeline_seq"]
    assert [e["full_label"] for e in doc["events"]] == [c.top_k[0].label for c in reversed(photos)]
