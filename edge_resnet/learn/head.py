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

HeadKind = Literal["ncm", "ncm-looks", "logistic"]
UNKNOWN = "unknown"


def class_logits(raw: Floats, columns: npt.NDArray[np.int64], c: int) -> Floats:
    """Per class, its best column (a class may have several prototypes: its day and night looks)."""
    if columns.size == c and np.array_equal(columns, np.arange(c)):
        return raw
    out: Floats = np.stack([raw[:, columns == k].max(axis=1) for k in range(c)], axis=1).astype(np.float32)
    return out


@dataclass(frozen=True)
class Head:
    """Column j of `weights` (D x P) scores class `classes[columns[j]]`, a class scoring its best
    column (P = C and columns = 0..C-1 but for `ncm-looks`, one prototype per class and look);
    `unknown_below`: a frame whose best class probability is under it is published as `unknown`
    (0 turns the rule off)."""

    kind: HeadKind
    classes: tuple[str, ...]
    centre: Floats  # (D,)
    weights: Floats  # (D, P)
    bias: Floats  # (P,)
    unknown_below: float = 0.0
    columns: npt.NDArray[np.int64] | None = None  # (P,) class of each column; None: column j is class j

    @property
    def size(self) -> int:
        """The embedding size the head takes."""
        return int(self.weights.shape[0])

    @property
    def column_classes(self) -> npt.NDArray[np.int64]:
        return self.columns if self.columns is not None else np.arange(len(self.classes), dtype=np.int64)

    def logits(self, x: npt.ArrayLike) -> Floats:
        raw: Floats = (prepare(x, self.centre) @ self.weights + self.bias).astype(np.float32)
        return class_logits(raw, self.column_classes, len(self.classes))

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
            columns=self.column_classes.astype(np.int64),
        )
        return buf.getvalue()

    @classmethod
    def from_npz(
        cls, data: bytes, kind: HeadKind, classes: list[str], unknown_below: float, where: str
    ) -> Head:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                centre, weights, bias = (np.asarray(z[k], np.float32) for k in ("centre", "weights", "bias"))
                columns = np.asarray(z["columns"], np.int64) if "columns" in z.files else np.arange(len(classes))
        except (OSError, ValueError, KeyError, EOFError) as e:
            raise ModelError(f"{where}: the learned head is unreadable ({e}); run `edge-resnet learn` again") from None
        c = len(classes)
        p = columns.size
        if (
            weights.ndim != 2
            or weights.shape[1] != p
            or bias.shape != (p,)
            or centre.shape != (weights.shape[0],)
            or set(columns.tolist()) != set(range(c))
        ):
            raise ModelError(
                f"{where}: the learned head's arrays do not match its {c} classes; run `edge-resnet learn` again"
            )
        return cls(kind, tuple(classes), centre, weights, bias, float(unknown_below), columns)
