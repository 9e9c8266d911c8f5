"""The install job's effects on the running daemon (install.Effects): which model runs, its signed
version, loading a new one and checking it on the golden images it carries, swapping it in through
the pipeline's reload path with the replaced model kept loaded, the frames it classified, and
swapping back in one frame when its health window fails."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from ..classify import Classifier
from ..config import ModelConfig, RegionConfig
from ..errors import ModelError
from ..pipeline import Pipeline
from .health import Outcome, golden_cases, golden_verdict, measured_latency_ms
from .install import Running, Swapped

log = logging.getLogger(__name__)

Verify = Callable[[Path], int | None]  # the signed version (None: unsigned, allowed); raises to refuse
APPLIED_WITHIN_S = 2.0
BASELINE_S = 120.0  # the running model's frames this far back make the baseline of the next one
OnSwitch = Callable[[ModelConfig, int | None], None]  # the daemon's record of what runs now


def check_golden(clf: Classifier) -> None:
    """The golden images the bundle carries must each get their label (ModelError otherwise)."""
    files = clf.engine.model.files
    try:
        cases = golden_cases(files)
    except ValueError as e:
        raise ModelError(str(e)) from None
    results = []
    for c in cases:
        img = cv2.imdecode(np.frombuffer(files[c.file], np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise ModelError(f"golden image {c.file} in the bundle is not a readable image")
        results.append((c, clf.classify(np.asarray(img, np.uint8), k=1).top.label))
    problem = golden_verdict(results)
    if problem:
        raise ModelError(problem)
    if cases:
        log.info("fleet: %d golden images give their labels", len(cases))


class ModelSwitch:
    """install.Effects on a Pipeline. `lock` is the daemon's model lock (SIGHUP reloads take it too);
    `on_switch` tells the daemon which model config and version run now."""

    def __init__(
        self,
        pipeline: Pipeline,
        model: Callable[[], ModelConfig],
        regions: Callable[[], list[RegionConfig]],
        lock: threading.RLock,
        on_switch: OnSwitch,
        verify: Verify,
        window_s: float,
    ) -> None:
        self.pipeline = pipeline
        self._model = model
        self._regions = regions
        self._lock = lock
        self._on_switch = on_switch
        self._verify = verify
        self.window_s = window_s
        self._previous: dict[int, tuple[ModelConfig, int | None]] = {}  # generation -> what it replaced

    def running(self) -> Running:
        return Running(self.pipeline.model_version, self._model().path)

    def verify(self, path: Path) -> int | None:
        return self._verify(path)

    def swap_in(self, path: Path, version: int) -> Swapped:
        with self._lock:
            before = self._model()
            prev_version = self.pipeline.model_version
            # the running model's recent frames (before an earlier rollback too: it keeps its generation)
            previous = self.pipeline.outcomes(self.pipeline.generation, since=time.monotonic() - BASELINE_S)
            mc = dataclasses.replace(before, path=str(path))
            measured: list[float | None] = [None]
            old_meta = self.pipeline.classifier.engine.model.meta
            previous_measured = measured_latency_ms(old_meta.source) if old_meta is not None else None

            def check(clf: Classifier) -> None:
                check_golden(clf)
                meta = clf.engine.model.meta
                measured[0] = measured_latency_ms(meta.source) if meta is not None else None

            gen = self.pipeline.swap_model(mc, self._regions() or None, version=version, check=check,
                                           keep_previous=True)  # fmt: skip
            self._previous[gen] = (before, prev_version)
            self._on_switch(mc, version)
        self._applied(lambda: self.pipeline.generation == gen)
        started = time.monotonic()
        return Swapped(gen, started, measured[0], Running(prev_version, before.path), previous, previous_measured)

    def outcomes(self, swapped: Swapped) -> Sequence[Outcome]:
        return self.pipeline.outcomes(swapped.generation)

    def swap_back(self, swapped: Swapped) -> None:
        with self._lock:
            before, version = self._previous.pop(swapped.generation)
            if not self.pipeline.swap_back(swapped.generation):
                # not held any more (a SIGHUP reload came in between): load it again
                log.warning("fleet: the previous model is not loaded any more; loading %s again", before.path)
                self.pipeline.reload(before, self._regions() or None, version=version)
            self._on_switch(before, version)
        self._applied(lambda: self.pipeline.generation != swapped.generation)

    def _applied(self, done: Callable[[], bool]) -> None:
        """The next frame applies a swap: wait for it (briefly), so what is published names what runs.
        A pipeline without frames (camera lost) fails its health window on frames, not here."""
        end = time.monotonic() + APPLIED_WITHIN_S
        while not done() and time.monotonic() < end:
            time.sleep(0.01)

    def settle(self, swapped: Swapped) -> None:
        self._previous.pop(swapped.generation, None)
        self.pipeline.forget_previous(swapped.generation)
