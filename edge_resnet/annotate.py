"""Draw the top-k labels, scores, fps and latency onto a copy of a frame (HTTP overlay and video sink)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import numpy.typing as npt

from .observation import Observation, Prediction

TOP1_COLOUR = (80, 220, 60)  # BGR green: the smoothed label
TEXT_COLOUR = (240, 240, 240)  # BGR near-white: the rest of the top-k
WARN_COLOUR = (60, 60, 230)  # BGR red: health problems
FONT = cv2.FONT_HERSHEY_SIMPLEX


def _scale(size: int) -> tuple[float, int, int]:
    """Font scale, thickness and line height for an image whose shorter side is `size` pixels (240p to 4K)."""
    scale = max(0.4, min(2.0, size / 720.0 * 0.8))
    thickness = max(1, round(scale * 2))
    line = int(32 * scale) + 6
    return scale, thickness, line


def _text_block(img: npt.NDArray[np.uint8], lines: Sequence[tuple[str, tuple[int, int, int]]], x: int, y: int) -> None:
    """Lines of text with a darkened backing box whose top-left corner is (x, y); clipped to the image."""
    if not lines:
        return
    h, w = img.shape[:2]
    scale, thick, step = _scale(min(h, w))
    widths = [cv2.getTextSize(t, FONT, scale, thick)[0][0] for t, _ in lines]
    pad = max(4, step // 4)
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(w, x + max(widths) + 2 * pad), min(h, y + step * len(lines) + pad)
    if x1 > x0 and y1 > y0:
        roi = img[y0:y1, x0:x1]
        roi[:] = (roi.astype(np.uint16) * 3 // 10).astype(np.uint8)  # dark, slightly see-through
    for i, (text, colour) in enumerate(lines):
        baseline_y = y + pad + step * i + int(step * 0.7)
        cv2.putText(img, text, (x + pad, baseline_y), FONT, scale, colour, thick, cv2.LINE_AA)


def first_synonym(label: str) -> str:
    """ImageNet labels list synonyms ("tench, Tinca tinca"); the first is the name people use."""
    return label.split(",")[0].strip() or label


def fit_text(text: str, max_width: int, scale: float, thick: int) -> str:
    """`text`, shortened at a word boundary with "..." when it is wider than `max_width` pixels."""
    if cv2.getTextSize(text, FONT, scale, thick)[0][0] <= max_width:
        return text
    words = text.split()
    while len(words) > 1:
        words.pop()
        cut = " ".join(words) + "..."
        if cv2.getTextSize(cut, FONT, scale, thick)[0][0] <= max_width:
            return cut
    return words[0] if words else text  # one long word: keep it whole rather than cut it mid-word


def annotate(
    image: npt.NDArray[np.uint8],
    top_k: Sequence[Prediction],
    label: Prediction | None = None,
    fps: float | None = None,
    latency_ms: float | None = None,
    warning: str | None = None,
) -> npt.NDArray[np.uint8]:
    """A copy of BGR `image` with the top-k (the smoothed `label` first, in green), fps and latency drawn.

    `warning` (e.g. "camera lost") is drawn in red at the bottom. The input is never modified.
    """
    out = np.ascontiguousarray(image).copy()
    h, w = out.shape[:2]
    scale, thick, _ = _scale(min(h, w))
    max_width = int(w * 0.6)  # leave most of the picture visible

    def line(p: Prediction) -> str:
        score = f"  {p.score * 100:.1f}%"
        room = max_width - cv2.getTextSize(score, FONT, scale, thick)[0][0]
        return fit_text(first_synonym(p.label), room, scale, thick) + score

    lines: list[tuple[str, tuple[int, int, int]]] = []
    if label is not None:
        lines.append((line(label), TOP1_COLOUR))
    for p in top_k:
        if label is not None and p.class_index == label.class_index:
            continue
        lines.append((line(p), TEXT_COLOUR if lines else TOP1_COLOUR))
    _text_block(out, lines, 8, 8)
    stats = []
    if fps is not None:
        stats.append(f"{fps:.1f} fps")
    if latency_ms is not None:
        stats.append(f"{latency_ms:.1f} ms")
    _, _, step = _scale(min(h, w))
    footer: list[tuple[str, tuple[int, int, int]]] = []
    if stats:
        footer.append(("  ".join(stats), TEXT_COLOUR))
    if warning:
        footer.append((warning, WARN_COLOUR))
    _text_block(out, footer, 8, h - 8 - step * len(footer) - step // 4)
    return out


def annotate_observation(
    obs: Observation, fps: float | None = None, warning: str | None = None
) -> npt.NDArray[np.uint8]:
    """`annotate` for an Observation: its frame, top-k, smoothed label and invoke time."""
    return annotate(obs.frame.image, obs.top_k, obs.label, fps, obs.invoke_ms, warning)


REGION_COLOUR = (230, 180, 40)  # BGR: a region's box


def annotate_regions(
    image: npt.NDArray[np.uint8], observations: Sequence[Observation], fps: float | None = None,
    warning: str | None = None,
) -> npt.NDArray[np.uint8]:
    """A copy of BGR `image` with each region's box, its name and its smoothed label (and fps, the
    slowest invoke and `warning` at the bottom)."""
    out = np.ascontiguousarray(image).copy()
    h, w = out.shape[:2]
    scale, thick, step = _scale(min(h, w))
    for obs in observations:
        if obs.roi is None:
            continue
        x0, y0, x1, y1 = obs.roi
        cv2.rectangle(out, (x0, y0), (min(w, x1) - 1, min(h, y1) - 1), REGION_COLOUR, max(2, thick))
        text = fit_text(f"{obs.region}: {first_synonym(obs.label.label)} {obs.label.score * 100:.0f}%",
                        max(40, x1 - x0 - 8), scale, thick)  # fmt: skip
        _text_block(out, [(text, TOP1_COLOUR)], x0 + 2, y0 + 2)
    stats = [f"{fps:.1f} fps"] if fps is not None else []
    if observations:
        stats.append(f"{max(o.invoke_ms for o in observations):.1f} ms")
    footer: list[tuple[str, tuple[int, int, int]]] = [("  ".join(stats), TEXT_COLOUR)] if stats else []
    if warning:
        footer.append((warning, WARN_COLOUR))
    _text_block(out, footer, 8, h - 8 - step * len(footer) - step // 4)
    return out
