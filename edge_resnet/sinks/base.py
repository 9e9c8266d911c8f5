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

DEGRADED = "degraded: "


def degraded_words(summary: str, detail: str) -> str:
    """A degraded sink's words: `degraded: <summary>; <detail>`. The summary must name no address or
    secret: /healthz shows it to anyone as its first line, the detail only to an authorised client."""
    return f"{DEGRADED}{summary}; {detail}"


def degraded_summary(words: str) -> str | None:
    """`degraded: <summary>` of words made by `degraded_words` (the detail cut off); None for other words."""
    return words.split("; ", 1)[0] if words.startswith(DEGRADED) else None


@dataclass(frozen=True)
class Remote:
    """What a sink may ask of the daemon on behalf of a remote control (Home Assistant's reload button
    and model select over MQTT). Each returns at once or after one model load, never blocks for long."""

    reload: Callable[[], None]  # reload as SIGHUP does (the daemon's loop does it)
    model_path: Callable[[], str]  # the running model's file; its folder is the models folder
    select_model: Callable[[Path], str | None]  # run this model (reload path, trust check): None, or why not


@dataclass(frozen=True)
class SinkContext:
    """What the daemon gives every sink factory besides its own table."""

    device_id: str
    state_dir: Path
    status: StatusFn
    sink_health: Callable[[], dict[str, str]] | None = None  # every sink's state, for the overlay's /healthz
    heartbeat_s: float = 30.0  # [pipeline] heartbeat_s
    remote: Remote | None = None  # None: nothing may be asked of the daemon (tests, `run` without one)
    fleet: bool = False  # [fleet] enabled: the fleet agent serves the model update topics


class Sink(Protocol):
    """An output. `publish` is called on the pipeline thread and must never block: a sink that does
    I/O hands the observation to a bounded queue owned by its own thread (dropping or coalescing
    when full), and `stop` joins that thread within `timeout` seconds."""

    name: str

    def start(self) -> None: ...

    def publish(self, obs: Observation) -> None: ...

    def stop(self, timeout: float = 2.0) -> None: ...

    def healthy(self) -> tuple[bool, str]:
        """(ok, words) for /healthz, in three states. Failed, `(False, why)`: the sink cannot do its job
        (the MQTT queue on a full disk); the daemon's Status turns unhealthy and /healthz answers 503.
        Degraded, `(True, degraded_words(...))`: it works around something a restart cannot fix (a
        broker never reached: wrong host, credentials); /healthz stays 200 and its first line says
        `degraded: <summary>`. Ok, `(True, words)`: anything else, e.g. a broker that went away after
        a connect (reported, not fatal)."""
        ...
