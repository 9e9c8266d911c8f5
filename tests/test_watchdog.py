"""The systemd contract of `edge-resnet run`, against a notify socket the test owns (as systemd's).

READY=1 after the first classified frame, WATCHDOG=1 at intervals <= WatchdogSec/2 while frames
flow, none once the source stalls (frames stop while the capture still counts as running), pings
again when frames return, STOPPING=1 on SIGTERM and a clean exit.

The stall: an image folder (loop = true) whose images are overwritten with garbage mid-run. The
capture thread stays healthy and keeps reading, but no frame decodes, so nothing is classified;
`[source] watchdog_s` is set long so the camera watchdog does not step in (see
`test_camera_lost_keeps_the_watchdog_fed` for what happens when it does).
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import REPO, run_cli
from .helpers.notify_socket import NotifySocket
from .helpers.run_child import run_args
from .helpers.video import pick_samples, write_folder

WATCHDOG_SEC = 3.0


@pytest.fixture
def listener() -> Iterator[NotifySocket]:
    with NotifySocket() as ns:
        yield ns


def _config(tmp_path: Path, model: Path, labels: Path, folder: Path, watchdog_s: float) -> Path:
    state = tmp_path / "state"
    state.mkdir()
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        'device_id = "watchdog-test"\n'
        f'state_dir = "{state}"\n'
        f'[model]\npath = "{model}"\nlabels = "{labels}"\n'
        f'[source]\ntype = "folder"\npath = "{folder}"\ninterval_s = 0.1\nloop = true\nwatchdog_s = {watchdog_s}\n'
    )
    return cfg


def _start(
    cfg: Path, listener: NotifySocket, log: Path, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update({"NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": str(int(WATCHDOG_SEC * 1e6))})
    env.update(extra_env or {})
    env.pop("WATCHDOG_PID", None)
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "edge_resnet", "run", "--config", str(cfg)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )


def _stop(proc: subprocess.Popen[bytes], listener: NotifySocket, log: Path) -> float:
    """SIGTERM; returns seconds to exit. Asserts STOPPING=1 and exit code 0."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("daemon did not exit within 10 s of SIGTERM:\n" + log.read_text()) from None
    took = time.monotonic() - t0
    t_stop, _ = listener.first("STOPPING=1", timeout=1)
    assert t_stop >= t0
    assert rc == 0, log.read_text()
    return took


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def _corrupt(folder: Path) -> dict[Path, bytes]:
    saved = {}
    for p in sorted(folder.glob("*.jpg")):
        saved[p] = p.read_bytes()
        p.write_bytes(b"not a jpeg any more" * 10)
    return saved


def test_ready_watchdog_stall_and_stopping(
    tmp_path: Path, listener: NotifySocket, mobilenet_quant: Path, labels_1001: Path, samples_dir: Path
) -> None:
    folder = write_folder(tmp_path / "frames", pick_samples(samples_dir, 4), size=(320, 240))
    cfg = _config(tmp_path, mobilenet_quant, labels_1001, folder, watchdog_s=60)
    log = tmp_path / "daemon.log"
    proc = _start(cfg, listener, log)
    try:
        t_ready, ready = listener.first("READY=1", timeout=60)
        status = next(x for x in ready if x.startswith("STATUS="))
        # READY=1 carries the status of the first classified frame: a label and a score
        assert "| " in status and "fps inference" in status and not status.startswith("STATUS=- "), ready
        assert not listener.times("WATCHDOG=1") or listener.times("WATCHDOG=1")[0] >= t_ready - 0.01

        # frames flow: pings at <= WatchdogSec/2
        time.sleep(4.0)
        t_stall = time.monotonic()
        flowing = [t for t in listener.times("WATCHDOG=1") if t_ready <= t <= t_stall]
        gaps = _gaps([t_ready, *flowing, t_stall])
        print(f"\nwhile frames flow: {len(flowing)} pings in {t_stall - t_ready:.1f} s, max gap {max(gaps):.2f} s")
        assert len(flowing) >= 3
        assert max(gaps) <= WATCHDOG_SEC / 2, gaps

        # the source stalls: no frame is classified any more -> no pings
        saved = _corrupt(folder)
        t_corrupted = time.monotonic()
        time.sleep(WATCHDOG_SEC + 1.5)
        # a frame already decoded, then a ping window that had seen it (the daemon pings every
        # WatchdogSec/4 if a frame was classified in the last WatchdogSec/4), plus its 0.2 s tick
        grace = WATCHDOG_SEC / 4 + 0.6
        during = [t for t in listener.times("WATCHDOG=1") if t > t_corrupted + grace]
        last = max([t_ready, *(t for t in listener.times("WATCHDOG=1") if t <= time.monotonic())])
        print(
            f"stalled: last ping {last - t_corrupted:+.2f} s after the stall, none for {time.monotonic() - last:.1f} s"
        )
        assert during == [], [t - t_corrupted for t in during]
        assert time.monotonic() - last > WATCHDOG_SEC  # systemd would restart it now
        assert proc.poll() is None, "the daemon must not exit by itself on a stall"

        # frames return -> pings return
        for p, data in saved.items():
            p.write_bytes(data)
        t_back = time.monotonic()
        time.sleep(2.5)
        back = [t for t in listener.times("WATCHDOG=1") if t > t_back]
        print(f"frames back: first ping {back[0] - t_back:.2f} s later" if back else "frames back: no ping")
        assert back and back[0] - t_back <= 2.0

        took = _stop(proc, listener, log)
        print(f"SIGTERM -> STOPPING=1 and exit 0 in {took:.2f} s")
        assert took <= 5.0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # logs: one line per event, not one per frame (~60 frames were classified). The folder source
    # warns once per undecodable file per pass: the stall this test makes, not the daemon's own log.
    lines = [
        x
        for x in log.read_text().splitlines()
        if x.strip() and not x.startswith("{") and "skipping cannot decode image" not in x
    ]
    assert len(lines) < 30, "\n".join(lines)


def test_camera_lost_keeps_the_watchdog_fed(
    tmp_path: Path, listener: NotifySocket, mobilenet_quant: Path, labels_1001: Path, samples_dir: Path
) -> None:
    """The daemon's documented choice (issue 7, self-healing cameras): once the camera watchdog
    declares the source lost and the capture thread is retrying, pings continue, so systemd does
    not restart a process that is correctly waiting for its camera; only the gap before the loss
    is declared (`[source] watchdog_s`) is without pings."""
    folder = write_folder(tmp_path / "frames", pick_samples(samples_dir, 3), size=(320, 240))
    cfg = _config(tmp_path, mobilenet_quant, labels_1001, folder, watchdog_s=0.5)
    log = tmp_path / "daemon.log"
    proc = _start(cfg, listener, log)
    try:
        listener.first("READY=1", timeout=60)
        time.sleep(1.0)
        for p in folder.glob("*.jpg"):  # the camera is gone: the folder is empty, open() fails
            p.unlink()
        t_gone = time.monotonic()
        time.sleep(4.0)
        later = [t - t_gone for t in listener.times("WATCHDOG=1") if t > t_gone + 1.5]
        print(f"\ncamera lost: pings at {[round(x, 1) for x in later]} s after the loss")
        assert later, "no pings while the camera is lost and being retried"
        assert proc.poll() is None
        _stop(proc, listener, log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "camera lost" in log.read_text()


def test_without_systemd_nothing_is_sent(
    tmp_path: Path, samples_dir: Path, mobilenet_quant: Path, labels_1001: Path
) -> None:
    """No NOTIFY_SOCKET: the daemon runs normally (sd_notify calls are no-ops)."""
    folder = write_folder(tmp_path / "frames", pick_samples(samples_dir, 2), size=(320, 240))
    r = run_cli(
        "run",
        *run_args(mobilenet_quant, labels_1001, folder, "--max-frames", "2"),
        timeout=120,
        unset=("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"),
    )
    assert r.returncode == 0, r.stderr
    assert "notification failed" not in r.stderr


def test_watchdog_abort_logs_every_threads_stack(
    tmp_path: Path, listener: NotifySocket, mobilenet_quant: Path, labels_1001: Path, samples_dir: Path
) -> None:
    """When the watchdog fires, systemd sends SIGABRT (WatchdogSignal's default). With the unit's
    Environment= (PYTHONFAULTHANDLER=1) the daemon leaves each thread's Python stack in the journal,
    so a hang in the field says where it hung; LimitCORE=0 keeps the core off the SD card."""
    from .test_systemd_units import MAIN, directives

    env_lines = " ".join(directives(MAIN)["Environment"])
    assert "PYTHONFAULTHANDLER=1" in env_lines and directives(MAIN)["LimitCORE"] == ["0"]
    folder = write_folder(tmp_path / "frames", pick_samples(samples_dir, 2), size=(320, 240))
    cfg = _config(tmp_path, mobilenet_quant, labels_1001, folder, watchdog_s=60)
    log = tmp_path / "daemon.log"
    proc = _start(cfg, listener, log, {"PYTHONFAULTHANDLER": "1"})
    try:
        listener.first("READY=1", timeout=60)
        proc.send_signal(signal.SIGABRT)
        rc = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert rc == -signal.SIGABRT
    assert "Fatal Python error: Aborted" in text
    assert text.count("Thread 0x") >= 3, text[-2000:]  # main, capture, pipeline (and sinks)
    assert "daemon.py" in text and "capture.py" in text
