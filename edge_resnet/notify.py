"""systemd's sd_notify protocol in a few lines of standard library: no libsystemd, no build step.

The service manager passes `NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace) and,
with `WatchdogSec=`, `WATCHDOG_USEC` (and `WATCHDOG_PID`). Each message is one datagram of
`KEY=VALUE` lines. Outside systemd every method is a no-op; a failed send is logged once and
never raised, because a lost notification must not take the daemon down.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


def _address(raw: str) -> str | None:
    """NOTIFY_SOCKET value -> an AF_UNIX address; '@x' is the abstract socket '\\0x'."""
    if raw.startswith("@"):
        return "\0" + raw[1:]
    if raw.startswith("/"):
        return raw
    return None  # vsock: and other forms this small client does not speak


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    raw = env.get("WATCHDOG_USEC", "")
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None  # the watchdog belongs to another process (e.g. our parent)
        except ValueError:
            return None
    return usec


class Notifier:
    """Tell systemd about readiness, liveness, status and shutdown. Safe to call from any thread."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        raw = env.get("NOTIFY_SOCKET", "")
        self._addr = _address(raw) if raw else None
        if raw and self._addr is None:
            log.warning("NOTIFY_SOCKET=%r is not a unix socket path; systemd notifications are off", raw)
        usec = _watchdog_usec(env)
        self._watchdog_usec = usec if self._addr is not None else None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._failed = False

    # -- what the caller asks --------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        """True when running under systemd with a notify socket (Type=notify)."""
        return self._addr is not None

    @property
    def watchdog_timeout(self) -> float | None:
        """`WatchdogSec=` in seconds: systemd kills the service this long after the last ping."""
        return self._watchdog_usec / 1e6 if self._watchdog_usec else None

    @property
    def watchdog_interval(self) -> float | None:
        """How often to send `watchdog()`, in seconds: half of WatchdogSec (systemd's advice), or
        None when no watchdog is configured for this process."""
        t = self.watchdog_timeout
        return t / 2.0 if t else None

    # -- messages ----------------------------------------------------------------------------
    def ready(self, status: str | None = None) -> bool:
        """READY=1: start-up is complete (model loaded, first frame classified)."""
        return self.send("READY=1", *([_status(status)] if status else []))

    def watchdog(self) -> bool:
        """WATCHDOG=1: still alive. Send only while real work gets done."""
        return self.send("WATCHDOG=1")

    def status(self, text: str) -> bool:
        """STATUS=...: one line shown by `systemctl status`."""
        return self.send(_status(text))

    def stopping(self, status: str | None = None) -> bool:
        """STOPPING=1: shutdown has begun."""
        return self.send("STOPPING=1", *([_status(status)] if status else []))

    def reloading(self) -> bool:
        """RELOADING=1 with MONOTONIC_USEC (Type=notify-reload wants both); send ready() when done."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def extend_timeout(self, seconds: float) -> bool:
        """EXTEND_TIMEOUT_USEC: ask for more start-up/shutdown time (a slow model load)."""
        return self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def send(self, *lines: str) -> bool:
        """Send one datagram of KEY=VALUE lines. True if sent; False when disabled or on error."""
        if self._addr is None or not lines:
            return False
        data = "\n".join(lines).encode("utf-8", "replace")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(data, self._addr)
            except OSError as e:
                if not self._failed:
                    self._failed = True
                    log.warning("systemd notification failed (%s); continuing without it", e)
                else:
                    log.debug("systemd notification failed: %s", e)
                return False
        return True

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _status(text: str) -> str:
    return "STATUS=" + " ".join(text.split())[:400]
