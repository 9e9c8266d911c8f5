"""sd_notify client against a real datagram socket the test owns (path and abstract namespace)."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_resnet.notify import Notifier


@pytest.fixture
def sock_path(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    s.bind(path)
    s.settimeout(2.0)
    yield s, path
    s.close()


def _recv(s: socket.socket) -> list[str]:
    return s.recv(4096).decode().split("\n")


def test_disabled_outside_systemd_is_a_noop() -> None:
    n = Notifier({})
    assert not n.enabled
    assert n.watchdog_interval is None and n.watchdog_timeout is None
    assert n.ready() is False
    assert n.watchdog() is False
    assert n.status("x") is False
    assert n.stopping() is False
    assert n.reloading() is False


def test_messages_arrive_on_a_path_socket(sock_path: tuple[socket.socket, str]) -> None:
    s, path = sock_path
    with Notifier({"NOTIFY_SOCKET": path}) as n:
        assert n.enabled
        assert n.ready()
        assert _recv(s) == ["READY=1"]
        assert n.watchdog()
        assert _recv(s) == ["WATCHDOG=1"]
        assert n.status("12.5 fps\nlabel: tabby cat")
        assert _recv(s) == ["STATUS=12.5 fps label: tabby cat"]
        assert n.ready(status="running")
        assert _recv(s) == ["READY=1", "STATUS=running"]
        assert n.stopping()
        assert _recv(s) == ["STOPPING=1"]
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert n.reloading()
        lines = _recv(s)
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert lines[0] == "RELOADING=1"
        key, _, value = lines[1].partition("=")
        assert key == "MONOTONIC_USEC" and before <= int(value) <= after
        assert n.extend_timeout(1.5)
        assert _recv(s) == ["EXTEND_TIMEOUT_USEC=1500000"]


def test_abstract_namespace_socket() -> None:
    name = f"edge-resnet-test-{uuid.uuid4().hex}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(2.0)
    try:
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        assert _recv(s) == ["READY=1"]
        n.close()
    finally:
        s.close()


def test_watchdog_interval_is_half_of_watchdog_sec(sock_path: tuple[socket.socket, str]) -> None:
    _, path = sock_path
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"})
    assert n.watchdog_timeout == 30.0
    assert n.watchdog_interval == 15.0
    mine = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())})
    assert mine.watchdog_interval == 1.0


def test_watchdog_for_another_pid_or_garbage_is_off(sock_path: tuple[socket.socket, str]) -> None:
    _, path = sock_path
    assert Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}).watchdog_interval is None
    assert Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "soon"}).watchdog_interval is None
    assert Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "0"}).watchdog_interval is None
    # a watchdog without a socket to ping is no watchdog
    assert Notifier({"WATCHDOG_USEC": "2000000"}).watchdog_interval is None


def test_send_errors_are_logged_once_and_never_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert n.enabled
    with caplog.at_level(logging.WARNING, logger="edge_resnet.notify"):
        for _ in range(5):
            assert n.watchdog() is False
        assert n.stopping() is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "systemd notification failed" in warnings[0].getMessage()


def test_recovers_when_the_socket_appears(tmp_path: Path) -> None:
    path = str(tmp_path / "late.sock")
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.ready() is False
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(2.0)
    try:
        assert n.watchdog()
        assert _recv(s) == ["WATCHDOG=1"]
    finally:
        s.close()


def test_unsupported_address_is_disabled(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="edge_resnet.notify"):
        n = Notifier({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not n.enabled and n.ready() is False
    assert "not a unix socket path" in caplog.text


def test_reads_os_environ_by_default(sock_path: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch) -> None:
    s, path = sock_path
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    n = Notifier()
    assert n.enabled and n.watchdog_interval == 2.0
    n.watchdog()
    assert _recv(s) == ["WATCHDOG=1"]
