"""A stand-in for systemd's NOTIFY_SOCKET that the tests own: records what the daemon sends."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from types import TracebackType


class NotifySocket:
    """Datagrams as (monotonic arrival time, lines). Bound under /tmp: AF_UNIX paths are limited to
    108 bytes, which pytest's tmp_path can exceed."""

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="er-notify-", dir="/tmp")
        self.path = os.path.join(self._dir, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, list[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="notify-socket", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode().split("\n")))

    def times(self, line: str) -> list[float]:
        """When each datagram holding exactly this line (e.g. "WATCHDOG=1") came."""
        return [t for t, lines in list(self.messages) if line in lines]

    def lines(self, prefix: str) -> list[str]:
        """Every line sent that starts with `prefix` (e.g. "STATUS="), in order."""
        return [ln for _, lines in list(self.messages) for ln in lines if ln.startswith(prefix)]

    def has(self, prefix: str) -> bool:
        return bool(self.lines(prefix))

    def first(self, line: str, timeout: float) -> tuple[float, list[str]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, lines in list(self.messages):
                if line in lines:
                    return t, lines
            time.sleep(0.02)
        raise AssertionError(f"no {line} within {timeout} s; got {self.messages}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1)
        self.sock.close()
        if os.path.exists(self.path):
            os.unlink(self.path)
        os.rmdir(self._dir)

    def __enter__(self) -> NotifySocket:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()
