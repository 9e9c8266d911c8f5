"""The small interface every output implements.

A new output is one module plus one registry line: the module holds the sink class and a
`make_sink(table, ctx: SinkContext)` factory; its config dataclass (pure: nothing that opens a
socket) lives in `sinkconfig.py` or beside it; and `config.SINKS` gets one `SinkKind` naming the
table, the class and the factory ("module:make_sink"). Loading, `run` flags, `config check`, the
daemon's start and reload then pick it up; nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..observation import Observation, Status

StatusFn = Callable[[], Status]


@dataclass(frozen=True)
class SinkContext:
    """What the daemon gives every sink factory besides its own table."""

    device_id: str
    state_dir: Path
    status: StatusFn
    sink_health: Callable[[], dict[str, str]] | None = None  # every sink's state, for the overlay's /healthz
    heartbeat_s: float = 30.0  # [pipeline] heartbeat_s


class Sink(Protocol):
    """An output. `publish` is called on the pipeline thread and must never block: a sink that does
    I/O hands the observation to a bounded queue owned by its own thread (dropping or coalescing
    when full), and `stop` joins that thread within `timeout` seconds."""

    name: str

    def start(self) -> None: ...

    def publish(self, obs: Observation) -> None: ...

    def stop(self, timeout: float = 2.0) -> None: ...

    def healthy(self) -> tuple[bool, str]:
        """(ok, reason) for /healthz; a broker that is down is reported, not fatal."""
        ...
