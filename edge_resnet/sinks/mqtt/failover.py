"""Which broker of `[mqtt] url` to try next, and how long to wait first. Pure: the client calls it from
paho's callbacks (what happened to the last attempt) and from `on_pre_connect` (where to go now).

- Start with the first broker; a failed attempt moves on to the next, round the list.
- Stay on the broker that works. When it drops the connection, try it once more (a restart, a blip)
  before moving on; never go back to an earlier broker while the current one works.
- The wait grows with each failed round of the whole list, from `base` up to `cap` seconds, with
  jitter (a fleet that lost its broker does not come back in lock step). paho's own backoff grows to
  120 s and has no jitter; it is set to zero and this one is used instead.
"""

from __future__ import annotations

import random
from typing import NamedTuple

BASE_S = 1.0
CAP_S = 5.0  # a broker that comes back is used within a few seconds


class Broker(NamedTuple):
    host: str
    port: int


class Brokers:
    """The broker list, the one in use, and the backoff."""

    def __init__(
        self, brokers: list[Broker], rng: random.Random | None = None, base: float = BASE_S, cap: float = CAP_S
    ) -> None:
        if not brokers:
            raise ValueError("no broker to connect to")
        self.brokers = list(brokers)
        self.index = 0
        self.failures = 0  # failed attempts since the last connection that worked
        self.rng = rng or random.Random()
        self.base, self.cap = base, cap

    @property
    def current(self) -> Broker:
        return self.brokers[self.index]

    @property
    def position(self) -> str:
        """ "broker 2 of 3", or "" for a single broker."""
        return f"broker {self.index + 1} of {len(self.brokers)}" if len(self.brokers) > 1 else ""

    def connected(self) -> None:
        """The current broker accepted us: stay here."""
        self.failures = 0

    def failed(self) -> float:
        """An attempt on the current broker failed (no answer, TLS, CONNECT refused): move to the next
        broker; returns the seconds to wait before trying it."""
        self.failures += 1
        self.index = (self.index + 1) % len(self.brokers)
        rounds = (self.failures - 1) // len(self.brokers)  # whole rounds of the list that failed
        return self._jitter(min(self.cap, self.base * 2.0**rounds))

    def lost(self) -> float:
        """The current broker dropped a connection that worked: try it again first, soon."""
        self.failures = 0
        return self._jitter(self.base)

    def _jitter(self, delay: float) -> float:
        """Between half and all of `delay`."""
        return delay * (0.5 + 0.5 * self.rng.random())
