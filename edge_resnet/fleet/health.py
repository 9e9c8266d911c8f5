"""The health window: is a model that was just swapped in doing its job? Pure functions of the
frames it classified (or failed to), so every rule is tested on values.

A new model fails its window when
- it fails to invoke (fast: a few failures and not one success end the window at once),
- too few frames are classified in the window,
- its invoke time is over `latency_factor` times a reference: what the previous model took here,
  scaled by the ratio of the two bundles' measured latencies when both carry one
  (`source.runtime.invoke_ms_median`, as `convert` measures it on the workstation), so a model that
  is meant to be heavier (MobileNet to ResNet-50) is expected to be slower by as much, while a
  workstation's milliseconds are never compared with a Pi's (fast too: once enough frames are in,
  waiting adds nothing). Invoke
  times here are compared by their lower quartile: a busy CPU (another process, another model)
  stretches some invokes, never all of them, while a model that is really slower is slow on every
  frame, its fastest ones included,
- it says one label on every frame while the previous model, on the same camera just before, said
  several (each on a fair share of its frames, so one flicker does not count as "varied").
Golden images carried in the bundle are checked before the swap (a model that gets them wrong
never runs): `golden.json` in the bundle's ZIP lists `{"file": "golden/x.jpg", "label": "..."}`
entries, each image a file of the bundle.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

GOLDEN_NAME = "golden.json"


class Outcome(Protocol):
    """One classification attempt (pipeline.FrameOutcome has these fields)."""

    @property
    def at(self) -> float: ...  # monotonic seconds

    @property
    def ok(self) -> bool: ...

    @property
    def invoke_ms(self) -> float: ...

    @property
    def label(self) -> str: ...  # this frame's own top-1 ("" when it failed)

    @property
    def error(self) -> str: ...  # why it failed ("" when ok)


@dataclass(frozen=True)
class Rules:
    window_s: float = 20.0
    latency_factor: float = 3.0
    min_frames: int = 3  # classified in the window
    fail_fast_errors: int = 3  # failures with no success yet: end the window now
    latency_samples: int = 10  # frames before the latency rule may end the window early
    varied_share: float = 0.1  # a label counts towards "varied" when it won this share of frames


@dataclass(frozen=True)
class Baseline:
    """What the new model is compared with."""

    invoke_ms: float | None  # the latency reference; None: no rule on latency
    latency_from: str  # "its bundle's measured 9.1 ms" or "the previous model's 9.1 ms here"
    previous_labels: int  # labels the previous model said on a fair share of its recent frames


@dataclass(frozen=True)
class Verdict:
    done: bool  # False: keep watching
    healthy: bool
    reason: str  # one line: why it failed, or a summary of the window when it passed


def measured_latency_ms(source: Mapping[str, Any]) -> float | None:
    """The invoke latency recorded in a bundle's metadata `source` when it was made (None if absent)."""
    for where in (source.get("runtime"), source):
        if isinstance(where, Mapping):
            v = where.get("invoke_ms_median")
            if isinstance(v, int | float) and not isinstance(v, bool) and v > 0:
                return float(v)
    return None


def low_quartile(ms: Sequence[float]) -> float:
    """The invoke time three frames in four take at least: what a model costs, with the frames a busy
    CPU stretched left out."""
    s = sorted(ms)
    return s[(len(s) - 1) // 4] if s else 0.0


def varied_labels(outcomes: Sequence[Outcome], share: float) -> int:
    """How many labels each won at least `share` of the classified frames."""
    labels = Counter(o.label for o in outcomes if o.ok)
    n = sum(labels.values())
    return sum(1 for c in labels.values() if n and c / n >= share)


def baseline(
    measured_ms: float | None, previous: Sequence[Outcome], rules: Rules, previous_measured_ms: float | None = None
) -> Baseline:
    """The reference for a new model: what the previous model took here, times the ratio of the two
    bundles' measured latencies when both were measured (else 1); and how varied the previous model's
    labels were. No reference without the previous model's frames: a bundle's own milliseconds were
    measured on another machine."""
    prev_ms = [o.invoke_ms for o in previous if o.ok]
    varied = varied_labels(previous, rules.varied_share)
    if len(prev_ms) < rules.min_frames:
        return Baseline(None, "no reference", varied)
    typical = low_quartile(prev_ms)
    if measured_ms is not None and previous_measured_ms is not None:
        scale = measured_ms / previous_measured_ms
        return Baseline(
            typical * scale,
            f"the previous model's {typical:.1f} ms here x {scale:.2f} (the bundles' measured "
            f"{measured_ms:.1f} / {previous_measured_ms:.1f} ms)",
            varied,
        )
    return Baseline(typical, f"the previous model's {typical:.1f} ms here", varied)


def judge(outcomes: Sequence[Outcome], started: float, now: float, base: Baseline, rules: Rules) -> Verdict:
    """The window's verdict at `now` (monotonic) over the new model's `outcomes` since `started`."""
    ok = [o for o in outcomes if o.ok]
    failed = [o for o in outcomes if not o.ok]
    first_error = failed[0].error if failed else ""
    if len(failed) >= rules.fail_fast_errors and not ok:
        return Verdict(True, False, f"fails to invoke: {len(failed)} frames failed, none classified ({first_error})")
    slow = _too_slow(ok, base, rules)
    if slow and len(ok) >= rules.latency_samples:
        return Verdict(True, False, slow)
    elapsed = now - started
    if elapsed < rules.window_s:
        return Verdict(False, False, "health window")
    window = f"{rules.window_s:g} s"
    if len(ok) < rules.min_frames:
        more = f"; {len(failed)} failed ({first_error})" if failed else ""
        return Verdict(True, False, f"{len(ok)} frames classified in its {window} health window{more}")
    if len(failed) > len(ok):
        return Verdict(True, False, f"fails to invoke on {len(failed)} of {len(outcomes)} frames ({first_error})")
    if slow:
        return Verdict(True, False, slow)
    said = Counter(o.label for o in ok)
    if base.previous_labels >= 2 and len(said) == 1:
        label = next(iter(said))
        return Verdict(True, False, f"says {label!r} on every frame ({len(ok)} frames) where the previous model "
                                    f"said {base.previous_labels} different labels")  # fmt: skip
    typical = low_quartile([o.invoke_ms for o in ok])
    ratio = f" ({typical / base.invoke_ms:.1f}x {base.latency_from})" if base.invoke_ms else ""
    return Verdict(True, True, f"{len(ok)} frames in {window}, invoke {typical:.1f} ms{ratio}, {len(said)} labels"
                               f"{f', {len(failed)} failed' if failed else ''}")  # fmt: skip


def _too_slow(ok: Sequence[Outcome], base: Baseline, rules: Rules) -> str | None:
    if base.invoke_ms is None or len(ok) < rules.min_frames:
        return None
    typical = low_quartile([o.invoke_ms for o in ok])
    if typical <= rules.latency_factor * base.invoke_ms:
        return None
    return (f"too slow: invoke {typical:.1f} ms, {typical / base.invoke_ms:.1f}x {base.latency_from} "
            f"(at most {rules.latency_factor:g}x)")  # fmt: skip


# -- golden images ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GoldenCase:
    file: str  # a file in the bundle's ZIP
    label: str  # the top-1 label the model must give it


def golden_cases(files: Mapping[str, bytes]) -> list[GoldenCase]:
    """The golden images a bundle carries ([] when it has none); ValueError names what is wrong."""
    raw = files.get(GOLDEN_NAME)
    if raw is None:
        return []
    try:
        doc = json.loads(raw)
        cases = [GoldenCase(str(c["file"]), str(c["label"])) for c in doc["images"]]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{GOLDEN_NAME} in the bundle is unreadable ({e})") from None
    missing = [c.file for c in cases if c.file not in files]
    if missing:
        raise ValueError(f"{GOLDEN_NAME} names {missing[0]}, which the bundle does not carry")
    return cases


def golden_verdict(results: Sequence[tuple[GoldenCase, str]]) -> str | None:
    """Why the golden images fail (one line), or None: every image must get its label."""
    wrong = [(c, got) for c, got in results if got.strip().lower() != c.label.strip().lower()]
    if not wrong:
        return None
    c, got = wrong[0]
    return (f"golden images: {len(wrong)} of {len(results)} wrong ({c.file}: expected {c.label!r}, got {got!r})")
