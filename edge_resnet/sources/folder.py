"""A folder of images as a frame source: each image in name order, held `interval_s` seconds."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..capture import EndOfStream, open_error
from ..errors import InputError
from ..images import list_images, load_image
from ..sourceconfig import FolderSource

log = logging.getLogger(__name__)


class FolderFrames:
    """Images are listed again on every pass, so files added or removed while running count.

    Between images the current one is delivered again (about 10 times a second), as a camera
    watching a still scene would: label smoothing that needs a few frames in a row then works
    the same on a folder as on a camera.
    """

    REPEAT_S = 0.1
    live = False  # images do not go stale: each is read when the pipeline is ready for it

    def __init__(self, path: str, interval_s: float = 1.0, loop: bool = False) -> None:
        self.path = Path(path)
        self.interval_s = interval_s
        self.loop = loop
        self.description = f"image folder {self.path}"
        self._files: list[Path] = []
        self._i = 0
        self._next_due = 0.0
        self._last: npt.NDArray[np.uint8] | None = None
        self._warned: set[Path] = set()  # log each unreadable file once, not once per pass

    @classmethod
    def from_config(cls, cfg: FolderSource) -> FolderFrames:
        """The registry's factory for `[source] type = "folder"`."""
        return cls(cfg.path, interval_s=cfg.interval_s, loop=cfg.loop)

    def open(self) -> None:
        if not self.path.is_dir():
            raise open_error(self.description, "it does not exist or is not a folder; check the path")
        try:
            self._files = list_images([self.path], recursive=False)
        except (InputError, OSError) as e:
            raise open_error(self.description, f"it cannot be listed ({e})") from None
        if not self._files:
            raise open_error(self.description, "it holds no .jpg/.png/.bmp images; add some")
        self._i = 0
        self._next_due = max(self._next_due, time.monotonic())  # looping keeps the pace

    def read(self) -> npt.NDArray[np.uint8] | None:
        if self.interval_s > 0:
            delay = self._next_due - time.monotonic()
            if delay > 0:
                time.sleep(min(delay, self.REPEAT_S))
                if self._next_due - time.monotonic() > 0:
                    return self._last  # not due yet: the still image again (None before the first)
        if self._i >= len(self._files):
            if not self.loop:
                raise EndOfStream(self.description)
            self.open()
        if self.interval_s > 0:
            self._next_due = max(self._next_due + self.interval_s, time.monotonic() - self.interval_s)
        f = self._files[self._i]
        self._i += 1
        try:
            self._last = load_image(f)
        except InputError as e:
            self._last = None  # a broken image shows nothing, not the one before it
            if f not in self._warned:
                self._warned.add(f)
                log.warning("skipping %s", e)
        return self._last

    def close(self) -> None:
        self._files = []
