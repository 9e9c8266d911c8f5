"""The small interface every output implements, so a new output is one new file."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..observation import Observation, Status

StatusFn = Callable[[], Status]


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
