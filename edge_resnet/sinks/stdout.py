"""JSON lines on standard output: the sink used when no other sink is configured.

One line on every label change and every `heartbeat_s` (or every frame with `every_frame`).
`publish` only puts a dict in a bounded queue; a writer thread does the (possibly blocking)
write, so a slow pipe reader never stalls classification: when the queue is full the oldest
line is dropped and counted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import sys
import threading
import time
from typing import Any, TextIO

from ..observation import Observation, observation_json
from ..sinkconfig import StdoutConfig
from .base import SinkContext

log = logging.getLogger(__name__)


def observation_dict(obs: Observation) -> dict[str, Any]:
    """One JSON line: the observation's JSON (as on MQTT and /api/state) plus `changed` and when it was written."""
    return {**observation_json(obs), "changed": obs.changed, "published_at": round(time.time(), 3)}


class StdoutSink:
    name = "stdout"

    def __init__(
        self,
        heartbeat_s: float = 30.0,
        every_frame: bool = False,
        stream: TextIO | None = None,
        queue_max: int = 256,
    ) -> None:
        self.heartbeat_s = heartbeat_s
        self.every_frame = every_frame
        self._stream = stream
        self._q: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=queue_max)
        self._thread: threading.Thread | None = None
        self._last_mono = float("-inf")
        self.dropped = 0
        self.written = 0
        self._error: str | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sink-stdout", daemon=True)
        self._thread.start()

    def publish(self, obs: Observation) -> None:
        now = time.monotonic()
        if not (self.every_frame or obs.changed or now - self._last_mono >= self.heartbeat_s):
            return
        self._last_mono = now
        item = observation_dict(obs)
        while True:
            try:
                self._q.put_nowait(item)
                return
            except queue.Full:
                try:
                    self._q.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def stop(self, timeout: float = 2.0) -> None:
        if self._thread is None:
            return
        with contextlib.suppress(queue.Full):
            self._q.put(None, timeout=timeout / 2)
        self._thread.join(timeout / 2)
        self._thread = None

    def healthy(self) -> tuple[bool, str]:
        return (self._error is None, self._error or "ok")

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            out = self._stream or sys.stdout
            try:
                out.write(json.dumps(item) + "\n")
                out.flush()
                self.written += 1
            except (BrokenPipeError, OSError, ValueError) as e:  # reader went away: stop writing, keep running
                self._error = f"stdout closed ({e})"
                log.warning("stdout sink: %s; no more JSON lines", self._error)
                return


def make_sink(cfg: StdoutConfig, ctx: SinkContext) -> StdoutSink:
    """The registry's factory for `[stdout]`: a line on every change and every `[pipeline] heartbeat_s`."""
    return StdoutSink(heartbeat_s=ctx.heartbeat_s, every_frame=cfg.every_frame)
