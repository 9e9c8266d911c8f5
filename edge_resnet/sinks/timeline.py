"""The overlay's timeline: label changes into the device's history, and the history out as the page's
JSON, a CSV download and thumbnails.

The entries are the daemon's own events: an Observation with `changed` set is exactly what the MQTT
sink publishes on `events`. A thumbnail is encoded when the change happens (label changes are rare:
the smoother holds a label for several frames), so a request never touches a full frame and a change
costs a few KB. The history itself (bounded, on disk, surviving restarts and a full disk) is
`historywriter.History` over `history.HistoryStore`.

The query string of /api/events and /api/events.csv (every key optional):
  label=L      only changes to the label L (the full label, as in `full_label`)
  region=R     only changes of the [[region]] R
  from=T, to=T only changes at or after `from` and before `to`: Unix seconds, or ISO 8601 (no zone:
               the device's local time)
  since=ID     only changes newer than the change ID (what came after the last one you saw)
  before=ID    only changes older than the change ID (the next page, newest first)
  order=desc   newest first (JSON's default) or `asc` (the CSV's default)
  limit=N      at most N changes: 1..500, 8 by default (CSV: every matching change)
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import cv2

from ..annotate import first_synonym
from ..history import HistoryEvent, HistoryQuery
from ..historywriter import History
from ..observation import Observation

TIMELINE_LEN = 8  # the live panel's page
THUMB_WIDTH = 120
QUERY_MAX = 500  # changes in one JSON answer
CSV_CHUNK = 1000  # changes read at a time for the CSV (the download is streamed)
CSV_COLUMNS = ("id", "time", "at", "region", "label", "score", "previous", "class_index", "frame_seq")


class QueryError(ValueError):
    """A query string the history cannot answer (HTTP 400); the message names the key and the fix."""


def _int(params: dict[str, str], key: str, lo: int, hi: int) -> int | None:
    text = params.get(key, "").strip()
    if not text:
        return None
    if not re.fullmatch(r"[0-9]{1,19}", text) or not lo <= int(text) <= hi:
        raise QueryError(f"{key}: {text!r} is not a whole number in {lo}..{hi}")
    return int(text)


def _time(params: dict[str, str], key: str) -> float | None:
    text = params.get(key, "").strip()
    if not text:
        return None
    try:
        t = float(text)
    except ValueError:
        try:
            t = datetime.fromisoformat(text).timestamp()
        except ValueError:
            raise QueryError(f"{key}: {text!r} is not a time; use Unix seconds or ISO 8601, e.g. "
                             "2024-05-01T12:00:00+02:00") from None  # fmt: skip
    if not math.isfinite(t):
        raise QueryError(f"{key}: {text!r} is not a time; use Unix seconds or ISO 8601")
    return t


def parse_query(params: dict[str, str], csv_default: bool = False) -> HistoryQuery:
    """The query string (see the module docstring) as a HistoryQuery; QueryError names a bad key."""
    order = params.get("order", "").strip() or ("asc" if csv_default else "desc")
    if order not in ("asc", "desc"):
        raise QueryError(f"order: {order!r} is not asc or desc")
    limit = _int(params, "limit", 1, 10**9 if csv_default else QUERY_MAX)
    return HistoryQuery(
        label=params.get("label") or None,
        region=params.get("region") or None,
        start=_time(params, "from"),
        end=_time(params, "to"),
        after=_int(params, "since", 0, 2**62),
        before=_int(params, "before", 0, 2**62),
        limit=limit if limit is not None else (10**9 if csv_default else TIMELINE_LEN),
        ascending=order == "asc",
    )


def shown_label(region: str | None, label: str) -> str:
    """What the page shows: the first synonym, after the region's name."""
    return (f"{region}: " if region else "") + first_synonym(label)


def event_json(e: HistoryEvent) -> dict[str, Any]:
    """One change as /api/events lists it. `seq` is the id (the field the page has always read)."""
    return {
        "id": e.id,
        "seq": e.id,
        **({"region": e.region} if e.region else {}),
        "label": shown_label(e.region, e.label),
        "full_label": e.label,
        "class_index": e.class_index,
        "score": round(e.score, 4),
        "previous": e.previous,
        "at": round(e.at, 3),
        "frame_seq": e.frame_seq,
        "thumbnail": f"api/events/{e.id}.jpg",  # relative to the page, as the page's other links
    }


class Timeline:
    """Label changes into `history` (pipeline thread), and the history's documents (HTTP threads)."""

    def __init__(self, history: History, thumb_width: int = THUMB_WIDTH) -> None:
        self.history = history
        self.thumb_width = thumb_width
        self._last: dict[str | None, str] = {}  # region (None: whole frame) -> its newest label

    def add(self, obs: Observation) -> None:
        """Record `obs` if its label changed (pipeline thread; one small JPEG per change, no disk)."""
        previous = self._last.get(obs.region)
        self._last[obs.region] = obs.label.label
        if not obs.changed:
            return
        self.history.add(
            at=obs.classified_at,
            region=obs.region,
            label=obs.label.label,
            class_index=obs.label.class_index,
            score=float(obs.label.score),
            previous=previous,
            frame_seq=obs.frame.seq,
            thumbnail=self._thumbnail(obs),
        )

    @property
    def seq(self) -> int:
        """The newest change's id: the page fetches /api/events only when this moves."""
        return self.history.latest_id

    def _thumbnail(self, obs: Observation) -> bytes | None:
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
        return jpg.tobytes() if ok else None

    def document(self, params: dict[str, str] | None = None) -> dict[str, Any]:
        """What /api/events returns: {"seq": newest id, "events": [a page, newest first by default],
        "total": matching changes, "more": another page follows, and the store's state}."""
        q = parse_query(params or {})
        seq = self.history.latest_id  # before the query: a change in between is fetched again, not missed
        page = self.history.query(q)
        return {
            "seq": seq,
            "events": [event_json(e) for e in page.events],
            "total": page.total,
            "more": page.more,
            "stored": self.history.store.count,
            "dropped": self.history.dropped,
            "problem": self.history.store.problem,
        }

    def labels_document(self) -> dict[str, Any]:
        """/api/events/labels: every label in the history with its count, for the page's filter."""
        counts = self.history.labels()
        return {"labels": [{"label": k, "short": first_synonym(k), "count": n} for k, n in sorted(counts.items())]}

    def csv_chunks(self, q: HistoryQuery) -> Iterator[bytes]:
        """The CSV download (no thumbnails), a chunk of rows at a time: memory stays bounded however
        long the history."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\r\n")
        w.writerow(CSV_COLUMNS)
        left = q.limit
        cursor = dataclasses.replace(q, limit=min(CSV_CHUNK, left))
        while True:
            page = self.history.query(cursor)
            for e in page.events:
                iso = datetime.fromtimestamp(e.at, UTC).isoformat(timespec="milliseconds")
                w.writerow([e.id, iso, f"{e.at:.3f}", e.region or "", e.label, f"{e.score:.4f}", e.previous or "",
                            e.class_index, e.frame_seq])  # fmt: skip
            yield buf.getvalue().encode()
            buf.seek(0)
            buf.truncate()
            left -= len(page.events)
            if not page.more or left <= 0 or not page.events:
                return
            last = page.events[-1].id
            cursor = dataclasses.replace(
                cursor,
                limit=min(CSV_CHUNK, left),
                after=last if q.ascending else cursor.after,
                before=cursor.before if q.ascending else last,
            )
