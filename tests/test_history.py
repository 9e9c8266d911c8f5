"""Issue 22: the device's history of label changes. A thousand changes over a restart through the real
HTTP sink; the count, byte and age caps each evict the oldest; `kill -9` leaves whole batches; a full
200 KB tmpfs degrades the history (writes refused and counted, the daemon goes on classifying) and it
recovers when space returns, as the MQTT event queue does."""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest

from edge_resnet import historywriter
from edge_resnet.errors import ConfigError
from edge_resnet.history import MIB, HistoryCaps, HistoryEvent, HistoryQuery, HistoryStore
from edge_resnet.historywriter import History
from edge_resnet.observation import Status
from edge_resnet.sinkconfig import HttpConfig
from edge_resnet.sinks.http import HISTORY_FILE, HttpSink
from tests.helpers.broker import free_port
from tests.helpers.observations import Classified, observation, synthetic_samples
from tests.helpers.run_child import REPO, RunChild, http_get


def jpeg_like(i: int, n: int = 3000) -> bytes:
    """`n` incompressible bytes (a JPEG does not compress either), different for every `i`."""
    return np.random.default_rng(i).integers(0, 256, n, dtype=np.uint8).tobytes()


def change(i: int, at: float, label: str = "cat", thumb: int = 3000) -> HistoryEvent:
    return HistoryEvent(i, at, None, label, 1, 0.9, "dog", i, jpeg_like(i, thumb))


def store_ids(s: HistoryStore) -> list[int]:
    return [e.id for e in s.query(HistoryQuery(limit=100_000, ascending=True)).events]


@pytest.fixture(scope="module")
def scenes() -> list[Classified]:
    return synthetic_samples(4)


def wait_bound(sink: HttpSink) -> str:
    end = time.monotonic() + 5
    while sink.bound_port == 0:
        assert time.monotonic() < end, sink.healthy()
        time.sleep(0.02)
    return sink.url


def get_json(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=10) as r:
        doc: dict[str, object] = json.loads(r.read())
        return doc


# -- must-show 1: a thousand changes over a restart, through the real HTTP sink ----------------------


def test_a_thousand_changes_over_a_restart_come_back_in_order(scenes: list[Classified], tmp_path: Path) -> None:
    """600 label changes, the sink stopped (as the daemon stops it), a new sink on the same state
    directory, 400 more: /api/events?label=X pages through all 250 changes to X, newest first, and
    the CSV has them oldest first; the files stay under the byte cap."""
    cfg = HttpConfig(listen="127.0.0.1:0", history_flush_s=0.2)
    x = scenes[0].top_k[0].label
    seq = 0

    def publish(sink: HttpSink, n: int) -> None:
        nonlocal seq
        for _ in range(n):
            sink.publish(observation(scenes[seq % 4], seq + 1, changed=True))
            seq += 1
            if seq % 100 == 0:
                assert sink.history.sync()  # the queue stays far below its bound, as at a camera's pace

    sink = HttpSink(cfg, lambda: Status(True, "ok"), state_dir=tmp_path)
    sink.start()
    publish(sink, 600)
    sink.stop()
    assert sorted(p.name for p in tmp_path.iterdir()) == [HISTORY_FILE]  # WAL checkpointed away on stop

    sink = HttpSink(cfg, lambda: Status(True, "ok"), state_dir=tmp_path)
    sink.start()
    try:
        url = wait_bound(sink)
        assert sink.timeline.seq == 600  # ids go on after the restart
        publish(sink, 400)
        got: list[dict[str, object]] = []
        before = ""
        while True:
            doc = get_json(url + f"api/events?label={quote(x)}&limit=100{before}")
            events = doc["events"]
            assert isinstance(events, list)
            got += events
            assert doc["total"] == 250
            if not doc["more"]:
                break
            before = f"&before={events[-1]['id']}"
        with urllib.request.urlopen(url + f"api/events.csv?label={quote(x)}", timeout=10) as r:
            rows = r.read().decode().splitlines()
        size = sink.history.store.size_bytes()
        words = sink.healthy()[1]
    finally:
        sink.stop()
    ids = [e["id"] for e in got]
    assert ids == list(range(997, 0, -4)), ids[:10]  # every 4th change, newest first, none twice
    times = [float(str(e["at"])) for e in got]
    assert times == sorted(times, reverse=True)
    assert {e["full_label"] for e in got} == {x}
    assert [e["previous"] for e in got if e["previous"] != scenes[3].top_k[0].label] == [None, None]  # 601 and 1
    assert rows[0].startswith("id,time,at,region,label,score,previous")
    assert [int(r.split(",")[0]) for r in rows[1:]] == list(range(1, 1000, 4))
    cap = cfg.history_max_mib * MIB
    print(f"\n1000 changes over a restart: {len(got)} to {x.split(',')[0]!r} back in order; store {size} bytes "
          f"({size / 1000:.0f} bytes a change) of the {cap / MIB:g} MiB cap; health: {words}")  # fmt: skip
    assert size < cap and "history 1000 changes" in words


# -- must-show 4: each cap evicts the oldest ------------------------------------------------------------


def test_the_count_cap_evicts_the_oldest(tmp_path: Path) -> None:
    s = HistoryStore(tmp_path / "h.sqlite", HistoryCaps(max_events=50))
    assert s.open()
    now = time.time()
    for b in range(8):
        assert s.write([change(i, now) for i in range(1 + 10 * b, 11 + 10 * b)])
    assert s.count == 50 and store_ids(s) == list(range(31, 81))
    assert s.evicted == {"count": 30}
    assert s.thumbnail(30) is None and s.thumbnail(31) == jpeg_like(31)
    s.close()
    s = HistoryStore(tmp_path / "h.sqlite", HistoryCaps(max_events=50))
    assert s.open() and s.count == 50 and s.last_id == 80
    s.close()
    print("\ncount cap 50: 80 written, 30 oldest evicted with their thumbnails")


def test_the_byte_cap_evicts_the_oldest_and_the_files_never_pass_it(tmp_path: Path) -> None:
    """Through the writer thread (its batches), 3 KB thumbnails: the database, WAL and shared-memory
    files together stay under a 512 KiB cap after every batch, and the newest changes are all kept."""
    caps = HistoryCaps(max_bytes=512 * 1024)
    h = History(tmp_path / "h.sqlite", caps, flush_s=0.05)
    h.start()
    sizes = []
    try:
        for b in range(25):
            for i in range(16):
                h.add(time.time(), None, "cat", 1, 0.9, None, 16 * b + i, jpeg_like(16 * b + i))
            assert h.sync()
            sizes.append(h.store.size_bytes())
        with h._db_lock:
            ids = store_ids(h.store)
    finally:
        h.stop()
    evicted = h.store.evicted["bytes"]
    print(f"\nbyte cap 512 KiB: 400 changes of 3 KB written, {evicted} oldest evicted, {len(ids)} kept; "
          f"files at most {max(sizes)} bytes")  # fmt: skip
    assert max(sizes) <= caps.max_bytes, sizes
    assert evicted > 200 and h.store.evicted["count"] == 0
    assert ids == list(range(ids[0], 401)) and ids[0] == evicted + 1  # the oldest went, in order
    assert (tmp_path / "h.sqlite").stat().st_size <= caps.max_bytes


def test_the_age_cap_evicts_old_changes_also_without_new_ones(tmp_path: Path) -> None:
    s = HistoryStore(tmp_path / "h.sqlite", HistoryCaps(max_age_s=3600))
    assert s.open()
    t0 = time.time()
    assert s.write([change(i, t0 - 3500 + i) for i in range(1, 11)], now=t0)  # 58 minutes old: kept
    assert s.write([change(i, t0) for i in range(11, 21)], now=t0)
    assert s.count == 20 and not s.evicted
    assert s.expire(now=t0 + 200)  # no new change, time passes: the first ten are past an hour
    assert store_ids(s) == list(range(11, 21)) and s.evicted == {"age": 10}
    assert s.write([change(21, t0 + 3700)], now=t0 + 3700)  # a write evicts by age too
    assert store_ids(s) == [21] and s.evicted == {"age": 20}
    s.close()


def test_history_keys_are_range_checked() -> None:
    for key, bad in (("history_max_events", 0), ("history_max_mib", 0.1), ("history_max_age_days", -1.0),
                     ("history_flush_s", float("inf"))):  # fmt: skip
        with pytest.raises(ConfigError, match=rf"\[http\] {key}: .* out of range; use"):
            HttpConfig(**{key: bad})  # type: ignore[arg-type]
    cfg = HttpConfig()
    assert (cfg.history, cfg.history_max_events, cfg.history_max_mib, cfg.history_max_age_days) == (True, 10000, 20, 30)


# -- robust to kill -9 ---------------------------------------------------------------------------------

WRITER = """
import sys, time
from pathlib import Path
from edge_resnet.history import HistoryCaps
from edge_resnet.historywriter import History
h = History(Path(sys.argv[1]), HistoryCaps(), flush_s=0.01)
h.start()
i = 0
while True:
    i += 1
    h.add(time.time(), None, "cat" if i % 2 else "dog", i % 2, 0.9, None, i, bytes([i % 251]) * 3000)
    if i % 8 == 0 and h.sync():
        print(i, flush=True)
"""


def test_kill_9_leaves_whole_batches(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        stored = 0
        while stored < 400:
            line = p.stdout.readline()
            assert line, "the writer died"
            stored = int(line)
    finally:
        p.kill()
        p.wait(10)
    s = HistoryStore(path, HistoryCaps())
    assert s.open() and s.problem is None and not s.set_aside  # no corruption
    ids = store_ids(s)
    assert ids == list(range(1, len(ids) + 1)) and len(ids) >= stored
    assert all(s.thumbnail(i) == bytes([i % 251]) * 3000 for i in ids)  # every stored change is whole
    print(f"\nkill -9 while writing: {len(ids)} changes whole after reopening ({stored} confirmed before the kill)")
    s.close()


# -- must-show 3: a full disk degrades the history, not the daemon -------------------------------------


def _mount(*args: str) -> tuple[bool, str]:
    r = subprocess.run(["mount", *args], capture_output=True, text=True)
    return r.returncode == 0, r.stderr.strip()


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 200 KB tmpfs (needs root or CAP_SYS_ADMIN: skipped otherwise, but a failure under CI=true)."""
    d = tmp_path / "tiny"
    d.mkdir()
    ok, why = _mount("-t", "tmpfs", "-o", "size=200k", "tmpfs", str(d))
    if not ok:
        msg = f"cannot mount a tmpfs here ({why or 'needs root'})"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False, capture_output=True)


def test_a_full_disk_degrades_counts_and_recovers(
    tiny_disk: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(historywriter, "RETRY_S", 0.05)
    caplog.set_level(logging.INFO, logger="edge_resnet")
    h = History(tiny_disk / "h.sqlite", HistoryCaps(), flush_s=0.05)
    h.start()
    try:
        n = 0
        while h.store.problem is None:  # 3 KB a change: the 200 KB disk fills
            n += 1
            h.add(time.time(), None, "cat", 1, 0.9, None, n, jpeg_like(n))
            if n % 4 == 0:
                h.sync()
            assert n < 500, "the disk did not fill"
        assert "full" in h.store.problem, h.store.problem
        more = h.hold_degraded + 10
        for i in range(n + 1, n + 1 + more):  # refused changes wait (bounded), the oldest are dropped and counted
            h.add(time.time(), None, "dog", 2, 0.8, "cat", i, jpeg_like(i))
        for _ in range(3):
            assert not h.sync()  # retries: refused again, logged once
        assert h.store.problem is not None
        stored, waiting = h.store.count, h.waiting()
        dropped = h.dropped
        page = h.query(HistoryQuery(limit=500))  # reading goes on: stored and waiting changes
        words = h.health()
        assert waiting == h.hold_degraded and dropped >= 10, (waiting, dropped)
        assert page.total == stored + waiting and page.events[0].id == n + more
        assert words.startswith("history degraded") and f"{dropped} changes not stored" in words, words
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1, warnings
        assert _mount("-o", "remount,size=4m", str(tiny_disk))[0]  # space comes back
        assert h.sync()
        assert h.store.problem is None and h.store.count == stored + waiting and h.waiting() == 0
        assert any("works again" in r.getMessage() for r in caplog.records)
    finally:
        h.stop()
    s = HistoryStore(tiny_disk / "h.sqlite", HistoryCaps())
    assert s.open() and s.stored_dropped == dropped  # the drops were counted on disk once it recovered
    s.close()
    print(f"\n200 KB tmpfs: {stored} changes stored, then degraded ({words}); recovered with {waiting} more")


FOLDER_FRAMES = 4


def test_the_daemon_on_a_full_state_dir_goes_on_classifying(
    tiny_disk: Path, mobilenet_quant: Path, labels_1001: Path, samples_dir: Path, tmp_path: Path
) -> None:
    """`edge-resnet run` with its state directory on a 200 KB tmpfs, 32 KB of it taken by a ballast file:
    the history fills the rest and degrades (/healthz says so, /metrics counts the drops) while frames
    are still classified; deleting the ballast lets it store again."""
    frames = tmp_path / "frames"
    frames.mkdir()
    entries = json.loads((samples_dir / "labels.json").read_text())
    for i, e in enumerate(entries[: FOLDER_FRAMES * 10 : 10]):  # four classes far apart: each frame a new label
        (frames / f"{i}.jpg").symlink_to(samples_dir / e["file"])
    ballast = tiny_disk / "ballast"
    ballast.write_bytes(bytes(32 * 1024))
    port = free_port()
    conf = tmp_path / "hist.toml"
    conf.write_text("\n".join([
        'device_id = "hist"', f'state_dir = "{tiny_disk}"',
        f'[model]\npath = "{mobilenet_quant}"\nlabels = "{labels_1001}"\nthreads = 1',
        f'[source]\ntype = "folder"\npath = "{frames}"\ninterval_s = 0.1\nloop = true',
        "[pipeline]\nwindow = 1",
        f'[http]\nlisten = "127.0.0.1:{port}"\nhistory_flush_s = 0.2',
    ]) + "\n")  # fmt: skip
    base = f"http://127.0.0.1:{port}/"

    def metrics() -> dict[str, float]:
        code, text = http_get(base + "metrics")
        if code != 200:
            return {}
        return {m[0]: float(m[1]) for m in re.findall(r"^edge_resnet_(\w+) (\S+)$", text, re.MULTILINE)}

    def wait(pred: Callable[[], bool], timeout: float, what: str, d: RunChild) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred():
                return
            assert d.p.poll() is None, f"the daemon exited: {d.tail()}"
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; {metrics()}; {d.tail()}")

    d = RunChild(["--config", str(conf)], dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        wait(lambda: metrics().get("history_degraded") == 1.0, 90, "the history to fill the disk", d)
        wait(lambda: metrics().get("history_dropped_total", 0) > 0, 60, "refused changes to be counted", d)
        m = metrics()
        _, health = http_get(base + "healthz")
        before = m["frames_classified_total"]
        time.sleep(2.0)
        after = metrics()
        assert after["frames_classified_total"] > before + 5, "classification stopped on a full disk"
        assert "http: " in health and "history degraded" in health, health
        degraded_stored = after["history_events"]
        ballast.unlink()  # space is freed
        wait(lambda: any("works again" in ln for ln in d.err), 60, "the history to work again", d)
        wait(lambda: metrics().get("history_events", 0) > degraded_stored, 30, "changes stored again", d)
        assert d.p.poll() is None
        warnings = [ln for ln in d.err if "degraded" in ln]
    finally:
        d.kill()
    print(f"\ndaemon on a 200 KB tmpfs: {degraded_stored:.0f} changes stored, then degraded with "
          f"{after['history_dropped_total']:.0f} dropped while {after['frames_classified_total'] - before:.0f} "
          f"frames were classified in 2 s; stored again after the ballast went; /healthz: "
          f"{[ln for ln in health.splitlines() if 'history' in ln]}")  # fmt: skip
    assert len(warnings) >= 1 and all("history" in ln for ln in warnings), warnings


def test_a_store_it_cannot_open_is_degraded_and_in_memory_when_asked(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    s = HistoryStore(tmp_path / "file" / "h.sqlite", HistoryCaps())  # a file where the directory should be
    assert not s.open() and s.problem is not None and "cannot open" in s.problem
    assert not s.write([change(1, time.time())])
    unsaved = [change(1, time.time())]
    assert [e.id for e in s.query(HistoryQuery(), unsaved).events] == [1]  # waiting changes still served
    m = HistoryStore(None, HistoryCaps(max_events=10))
    assert m.open() and m.write([change(i, time.time()) for i in range(1, 21)]) and m.count == 10
    assert m.size_bytes() == 0
    with pytest.raises(sqlite3.OperationalError):
        HistoryStore(None, HistoryCaps())._require()


def test_a_corrupt_file_is_set_aside_and_a_fresh_history_started(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / HISTORY_FILE
    h = History(path, HistoryCaps())
    h.start()
    h.add(time.time(), None, "cat", 1, 0.9, None, 1, jpeg_like(1))
    h.stop()
    with path.open("r+b") as f:
        f.write(b"this is not a database" * 10)
    h = History(path, HistoryCaps())
    h.start()
    try:
        assert h.store.problem is None and len(h.store.set_aside) == 1 and h.store.set_aside[0].exists()
        new = h.add(time.time(), None, "dog", 2, 0.9, None, 2, jpeg_like(2))
        assert new > 1 and h.sync()  # ids go on above the lost file's (from the clock)
        assert [e.label for e in h.query(HistoryQuery()).events] == ["dog"]
    finally:
        h.stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "corrupt" in warnings[0] and "moved it to" in warnings[0], warnings
