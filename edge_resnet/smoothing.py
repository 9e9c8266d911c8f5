"""Keeping the published label steady: pure, so tests can feed it probability vectors."""

from __future__ import annotations

import collections
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from .config import Smoothing
from .observation import Prediction


class Smoother:
    """Keeps the published label steady.

    - "none": this frame's top-1.
    - "average": top-1 of the mean probabilities over the last `window` frames.
    - "hysteresis": a new label is adopted only after it was top-1 for `window` frames in a row.
    In every mode a *new* label must also reach `min_score`; until then the old label stays.
    """

    def __init__(self, mode: Smoothing = "hysteresis", window: int = 3, min_score: float = 0.0) -> None:
        self.mode = mode
        self.window = window
        self.min_score = min_score
        self.reset()

    def reset(self) -> None:
        self.current: Prediction | None = None
        self._history: collections.deque[npt.NDArray[np.float32]] = collections.deque(maxlen=self.window)
        self._candidate = -1
        self._count = 0

    def update(
        self, probs: npt.NDArray[np.float32], labels: Sequence[str], label_offset: int
    ) -> tuple[Prediction, bool]:
        """Feed one frame's probabilities; returns (published label, changed)."""
        if self._history and self._history[0].shape != probs.shape:
            self.reset()  # a model with another number of classes
        if self.mode == "average":
            self._history.append(probs)
            scores = np.mean(np.stack(self._history), axis=0) if len(self._history) > 1 else probs
        else:
            scores = probs
        best = label_offset + int(np.argmax(scores[label_offset:]))  # background is never a label

        def pred(i: int) -> Prediction:
            return Prediction(labels[i], i - label_offset, float(scores[i]))

        prev = self.current
        if prev is None:
            self.current = pred(best)
            return self.current, True
        prev_slot = prev.class_index + label_offset
        if best == prev_slot:
            self._candidate, self._count = -1, 0
            self.current = pred(best)
            return self.current, False
        if self.mode == "hysteresis":
            if best == self._candidate:
                self._count += 1
            else:
                self._candidate, self._count = best, 1
            adopt = self._count >= self.window
        else:
            adopt = True
        if adopt and float(scores[best]) >= self.min_score:
            self._candidate, self._count = -1, 0
            self.current = pred(best)
            return self.current, True
        self.current = pred(prev_slot)  # keep the label, report its current score
        return self.current, False
