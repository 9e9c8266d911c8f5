"""Embedding rows as the head sees them: dequantized, L2-normalised, centred, normalised again.

Pooled features after ReLU are all non-negative, so raw cosine similarities between any two
images sit near 1; removing the mean of the examples first spreads them out, which helps the
nearest-class-mean head most (the logistic head learns its own bias either way).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float32]


def normalise(x: npt.ArrayLike) -> Floats:
    """Rows scaled to unit length (an all-zero row stays zero)."""
    a = np.asarray(x, dtype=np.float32)
    a = a.reshape(1, -1) if a.ndim == 1 else a.reshape(a.shape[0], -1)
    n = np.linalg.norm(a, axis=1, keepdims=True)
    out: Floats = (a / np.maximum(n, 1e-12)).astype(np.float32)
    return out


def centre_of(x: npt.ArrayLike) -> Floats:
    """The mean of the normalised rows: what `prepare` subtracts."""
    out: Floats = normalise(x).mean(axis=0).astype(np.float32)
    return out


def prepare(x: npt.ArrayLike, centre: Floats) -> Floats:
    """normalise -> subtract `centre` -> normalise: the head's input space."""
    return normalise(normalise(x) - centre)
