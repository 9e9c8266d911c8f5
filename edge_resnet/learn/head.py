"""The learned head: a linear layer over prepared embeddings, and the `unknown` rule.

Both kinds are the same shape at run time (`softmax(s * W^T z + b)`): the nearest-class-mean head
is W = the normalised class means times a temperature, b = 0; the logistic head has its fitted
W and b. So `classify`, the daemon and `learn` share one pure function of an embedding row.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from ..errors import ModelError
from .features import Floats, prepare

HeadKind = Literal["ncm", "logistic"]
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Head:
    """`classes[i]` is column i of `weights` (D x C); `unknown_below`: a frame whose best class
    probability is under it is published as `unknown` (0 turns the rule off)."""

    kind: HeadKind
    classes: tuple[str, ...]
    centre: Floats  # (D,)
    weights: Floats  # (D, C)
    bias: Floats  # (C,)
    unknown_below: float = 0.0

    @property
    def size(self) -> int:
        """The embedding size the head takes."""
        return int(self.weights.shape[0])

    def logits(self, x: npt.ArrayLike) -> Floats:
        out: Floats = (prepare(x, self.centre) @ self.weights + self.bias).astype(np.float32)
        return out

    def probabilities(self, x: npt.ArrayLike) -> Floats:
        """Class probabilities, one row per embedding row."""
        z = self.logits(x)
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        out: Floats = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
        return out

    def predict(self, x: npt.ArrayLike) -> npt.NDArray[np.int64]:
        return np.asarray(self.logits(x).argmax(axis=1), dtype=np.int64)

    def scores(self, embedding: npt.ArrayLike) -> Floats:
        """One frame's scores over `classes + [unknown]`: the class probabilities, then the threshold
        itself as `unknown`'s score, so `unknown` wins exactly when no class reaches it (argmax,
        smoothing and top-k work on this vector unchanged)."""
        p = self.probabilities(embedding)[0]
        out: Floats = np.append(p, np.float32(self.unknown_below)).astype(np.float32)
        return out

    @property
    def labels(self) -> list[str]:
        """What `scores` slots are called."""
        return [*self.classes, UNKNOWN]

    def to_npz(self) -> bytes:
        buf = io.BytesIO()
        np.savez(
            buf,
            centre=self.centre.astype(np.float32),
            weights=self.weights.astype(np.float32),
            bias=self.bias.astype(np.float32),
        )
        return buf.getvalue()

    @classmethod
    def from_npz(
        cls, data: bytes, kind: HeadKind, classes: list[str], unknown_below: float, where: str
    ) -> Head:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                centre, weights, bias = (np.asarray(z[k], np.float32) for k in ("centre", "weights", "bias"))
        except (OSError, ValueError, KeyError) as e:
            raise ModelError(f"{where}: the learned head is unreadable ({e}); run `edge-resnet learn` again") from None
        c = len(classes)
        if weights.ndim != 2 or weights.shape[1] != c or bias.shape != (c,) or centre.shape != (weights.shape[0],):
            raise ModelError(
                f"{where}: the learned head's arrays do not match its {c} classes; run `edge-resnet learn` again"
            )
        return cls(kind, tuple(classes), centre, weights, bias, float(unknown_below))
