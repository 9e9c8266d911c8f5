"""`[fleet]`: whether this device takes install jobs over MQTT, which groups it is in, and how a new
model's health window judges it. Pure (no socket, no file), so loading a config stays cheap.

    [fleet]
    enabled = true
    groups = ["kitchen", "canary"]   # also takes <prefix>/group/<group>/model/install
    health_window_s = 20             # a new model runs this long under watch before it is "applied"
    latency_factor = 3.0             # invoke time may be this many times the bundle's measured latency
    max_download_mb = 200            # a command announcing a bigger model is refused
    start_delay_max_s = 30           # a random wait before downloading, so a fleet does not fetch at once
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .configtools import check_range, from_dict
from .errors import ConfigError

GROUP = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_GROUPS = 32


@dataclass
class FleetConfig:
    """`[fleet]` in the config file; off unless `enabled = true` (and `[mqtt]` is configured)."""

    enabled: bool = False
    groups: list[str] = field(default_factory=list)
    health_window_s: float = 20.0
    latency_factor: float = 3.0
    max_download_mb: float = 200.0
    start_delay_max_s: float = 30.0

    def __post_init__(self) -> None:
        if len(self.groups) > MAX_GROUPS:
            raise ConfigError(f"[fleet] groups: {len(self.groups)} groups; at most {MAX_GROUPS}")
        for i, g in enumerate(self.groups):
            if not isinstance(g, str) or not GROUP.fullmatch(g):
                raise ConfigError(
                    f"[fleet] groups[{i}]: {g!r} is not usable in an MQTT topic; use 1..64 ASCII letters, digits, "
                    "'-' or '_'"
                )
        if len(set(self.groups)) != len(self.groups):
            raise ConfigError("[fleet] groups: a group is listed twice; list each once")
        check_range("[fleet] health_window_s", self.health_window_s, 1, 3600, "seconds, e.g. 20")
        check_range("[fleet] latency_factor", self.latency_factor, 1.1, 100, "a factor, e.g. 3.0")
        check_range("[fleet] max_download_mb", self.max_download_mb, 0.001, 100_000, "megabytes, e.g. 200")
        check_range("[fleet] start_delay_max_s", self.start_delay_max_s, 0, 86400, "seconds, e.g. 30; 0 for none")

    @property
    def max_download_bytes(self) -> int:
        return int(self.max_download_mb * 1_000_000)


def fleet_from_dict(data: Any) -> FleetConfig:
    """The `[fleet]` table (a missing table gives the defaults: off)."""
    return from_dict(FleetConfig, data if data is not None else {}, "fleet")
