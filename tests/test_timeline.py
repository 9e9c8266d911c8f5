"""Issue 14 case 10 without a browser: label shortening on the video overlay; and the timeline of label
changes behind /api/events (issue 22: the history's filters, pages, CSV and thumbnails)."""

from __future__ import annotations

import csv
import dataclasses
import datetime
import io
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_resnet.annotate import FONT, _scale, annotate, first_synonym, fit_text
from edge_resnet.history import HistoryCaps
from edge_resnet.historywriter import History
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


def test_timeline_keeps_the_changes_newest_first(photos: list[Classified]) -> None:
    """Each change with the label before it (per region) and a 120-px JPEG of the frame or of the
    region's crop; unchanged frames are not changes."""
    tl = Timeline(History(None, HistoryCaps()))
    steps = [(photos[0], True), (photos[0], False), (photos[1], True), (photos[2], True)]
    for seq, (c, changed) in enumerate(steps, start=1):
        tl.add(observation(c, seq, changed))
    door = dataclasses.replace(observation(photos[1], 5, True), region="door", roi=(10, 20, 110, 70))
    tl.add(door)
    doc = tl.document()
    assert doc["seq"] == 4 == tl.seq and [e["frame_seq"] for e in doc["events"]] == [5, 4, 3, 1]
    labels = [c.top_k[0].label for c in photos]
    assert [e["previous"] for e in doc["events"]] == [None, labels[1], labels[0], None]  # the door's first
    e = doc["events"][1]
    assert e["label"] == first_synonym(labels[2]) and e["full_label"] == labels[2]
    assert e["thumbnail"] == "api/events/3.jpg"
    assert doc["events"][0]["label"] == "door: " + first_synonym(labels[1]) and doc["events"][0]["region"] == "door"
    shapes = []
    for i in (3, 4):
        jpg = tl.history.thumbnail(i)
        assert jpg is not None
        img = cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR)
        shapes.append(img.shape[:2])
    assert shapes == [(90, 120), (60, 120)]  # the frame (480x640), the door's 100x50 crop


@pytest.fixture
def served(photos: list[Classified], tmp_path: Path) -> Iterator[tuple[HttpSink, str]]:
    """An overlay with a history on disk and five changes 10 s apart: photo 0, 1, 2, 0, then the door region."""
    sink = HttpSink(HttpConfig(listen="127.0.0.1:0"), lambda: Status(True, "ok"), state_dir=tmp_path)
    sink.start()
    try:
        end = time.monotonic() + 5
        while sink.bound_port == 0:
            assert time.monotonic() < end
            time.sleep(0.02)
        t0 = float(int(time.time()) - 60)  # whole seconds: the JSON rounds times to ms
        for seq, c in enumerate([*photos, photos[0]], start=1):
            sink.publish(dataclasses.replace(observation(c, seq, changed=True), classified_at=t0 + 10 * seq))
            sink.publish(observation(c, seq, changed=False))
        door = observation(photos[1], 5, True)
        sink.publish(dataclasses.replace(door, region="door", roi=(0, 0, 64, 64), classified_at=t0 + 50))
        yield sink, sink.url
    finally:
        sink.stop()


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def ids(url: str) -> list[int]:
    code, _, body = get(url)
    assert code == 200, body
    return [e["id"] for e in json.loads(body)["events"]]


def test_api_events_serves_the_timeline(served: tuple[HttpSink, str], photos: list[Classified]) -> None:
    _, url = served
    code, ctype, body = get(url + "api/events")
    doc = json.loads(body)
    state = json.loads(get(url + "api/state")[2])
    assert code == 200 and ctype == "application/json"
    assert doc["seq"] == 5 == state["timeline_seq"] and doc["total"] == 5 and not doc["more"]
    assert [e["full_label"] for e in doc["events"]] == [c.top_k[0].label for c in [photos[1], photos[0], *photos[::-1]]]
    with urllib.request.urlopen(url + doc["events"][0]["thumbnail"], timeout=5) as r:
        assert r.headers["Content-Type"] == "image/jpeg" and "immutable" in r.headers["Cache-Control"]
        assert cv2.imdecode(np.frombuffer(r.read(), np.uint8), cv2.IMREAD_COLOR).shape == (120, 120, 3)


def test_api_events_filters_and_pages(served: tuple[HttpSink, str], photos: list[Classified]) -> None:
    _, url = served
    api = url + "api/events"
    first = urllib.parse.quote(photos[0].top_k[0].label)
    assert ids(api + f"?label={first}") == [4, 1]
    assert ids(api + "?region=door") == [5]
    assert ids(api + "?since=3") == [5, 4] and ids(api + "?before=3") == [2, 1]
    assert ids(api + "?order=asc&limit=2") == [1, 2] and json.loads(get(api + "?order=asc&limit=2")[2])["more"]
    assert ids(api + "?order=asc&since=2&limit=2") == [3, 4]  # what came after the last one seen
    at = {e["id"]: e["at"] for e in json.loads(get(api)[2])["events"]}
    assert ids(api + f"?from={at[2]}&to={at[4]}") == [3, 2]  # from <= at < to
    iso = datetime.datetime.fromtimestamp(at[4], datetime.UTC).isoformat()
    assert ids(api + f"?from={urllib.parse.quote(iso)}") == [5, 4]
    code, ctype, body = get(url + f"api/events.csv?label={first}")
    rows = list(csv.reader(io.StringIO(body.decode())))
    assert code == 200 and ctype.startswith("text/csv")
    assert rows[0] == ["id", "time", "at", "region", "label", "score", "previous", "class_index", "frame_seq"]
    assert [r[0] for r in rows[1:]] == ["1", "4"] and rows[2][6] == photos[2].top_k[0].label  # oldest first
    assert rows[1][1].startswith(datetime.datetime.fromtimestamp(at[1], datetime.UTC).strftime("%Y-%m-%dT%H:%M"))
    labels = json.loads(get(url + "api/events/labels")[2])["labels"]
    assert {(x["short"], x["count"]) for x in labels} == {
        (first_synonym(photos[0].top_k[0].label), 2), (first_synonym(photos[1].top_k[0].label), 2),
        (first_synonym(photos[2].top_k[0].label), 1)}  # fmt: skip
    for bad, key in [("limit=0", "limit"), ("limit=501", "limit"), ("order=sideways", "order"),
                     ("from=yesterday", "from"), ("since=-1", "since"), ("before=1e3", "before")]:  # fmt: skip
        code, _, body = get(api + "?" + bad)
        assert code == 400 and body.decode().startswith(key + ":"), (bad, code, body)
        assert get(url + "api/events.csv?" + bad)[0] == (200 if bad == "limit=501" else 400)  # a CSV has no page cap
    for missing in ("api/events/99.jpg", "api/events/abc.jpg", "api/events/1.png", "api/events/" + "9" * 40 + ".jpg"):
        assert get(url + missing)[0] == 404, missing
