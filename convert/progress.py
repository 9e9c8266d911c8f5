"""Progress for the long steps of a conversion: a tqdm bar with ETA on a terminal, a few lines otherwise.

A bar redrawn with carriage returns is right for a person at a terminal and wrong for a log file
or CI, so when stderr is not a terminal the same progress becomes one INFO line at the start, one
at most every `PLAIN_EVERY_S` seconds with the ETA, and one at the end. `-q` (root logger above
INFO) shows neither.
"""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

PLAIN_EVERY_S = 15.0


def _eta(done: int, total: int, elapsed: float) -> str:
    if done <= 0 or total <= done:
        return ""
    return f", about {elapsed / done * (total - done):.0f} s left"


class Progress:
    """Counts `total` units of one step; `note` names the current unit (e.g. a conversion stage)."""

    def __init__(self, what: str, total: int, unit: str = "image") -> None:
        self.what, self.total, self.unit = what, total, unit
        self.done = 0
        self.t0 = time.perf_counter()
        self._last_line = self.t0
        self._bar: Any = None
        self._logs: Any = None
        if not logging.getLogger().isEnabledFor(logging.INFO):
            self._mode = "off"
        elif sys.stderr.isatty():
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._mode = "bar"
            self._bar = tqdm(total=total, desc=what, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=True)
            self._logs = logging_redirect_tqdm()  # log lines go above the bar, not onto it
            self._logs.__enter__()
        else:
            self._mode = "lines"
            log.info("%s: %d %s(s)", what, total, unit)

    def note(self, text: str) -> None:
        """Say what the current unit is (shown beside the bar; a line of its own without a terminal)."""
        if self._mode == "bar":
            self._bar.set_postfix_str(text, refresh=True)
        elif self._mode == "lines":
            log.info("%s: %s (%d/%d)", self.what, text, self.done + 1, self.total)

    def write(self, text: str) -> None:
        """Print lines without breaking the bar (for output captured while a step ran)."""
        if self._mode == "bar":
            from tqdm import tqdm

            tqdm.write(text.rstrip("\n"), file=sys.stderr)
        else:
            sys.stderr.write(text)
            sys.stderr.flush()

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._mode == "bar":
            self._bar.update(n)
        elif self._mode == "lines":
            now = time.perf_counter()
            if now - self._last_line >= PLAIN_EVERY_S and self.done < self.total:
                self._last_line = now
                log.info(
                    "%s: %d/%d %s(s)%s", self.what, self.done, self.total, self.unit,
                    _eta(self.done, self.total, now - self.t0),
                )

    def _close_bar(self) -> None:
        self._bar.close()
        self._logs.__exit__(None, None, None)

    def close(self) -> None:
        if self._mode == "bar":
            self._close_bar()
        elif self._mode == "lines":
            log.info("%s: %d/%d %s(s) in %.0f s", self.what, self.done, self.total, self.unit,
                     time.perf_counter() - self.t0)
        self._mode = "off"

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if et is None:
            self.close()
        elif self._mode == "bar":  # leave the bar where it stopped; no "done" line for a failed step
            self._close_bar()
            self._mode = "off"
        else:
            self._mode = "off"
