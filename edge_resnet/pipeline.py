"""The pipeline thread: newest frame -> Classifier -> smoothing -> every sink, plus counters.

One Classifier (one interpreter) lives here, created once and replaced only by `reload`, which
loads and warms up the new model on the caller's thread first (through `model.py`, the model
lifecycle: loading, the Edge TPU's CPU fallback and retry): a model that does not load is
refused and the old one keeps classifying. Sinks get every classified frame (`publish` never
blocks); `Observation.changed` marks a change of the smoothed label, which is what MQTT events
and the stdout sink report.

A fleet install (fleet/swap.py) swaps with `swap_model(..., keep_previous=True)`: the replaced
classifier stays loaded, so `swap_back` restores it on the next frame without loading anything, and
each classification attempt is kept as a FrameOutcome tagged with the model's generation, which is
what the health window judges.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np

from .capture import Capture, CaptureState
from .classify import Classifier, Result
from .config import ModelConfig, PipelineConfig, RegionConfig
from .errors import ConfigError, EdgeResnetError
from .model import cpu_fallback, load_classifier, retry_edgetpu
from .observation import Frame, Observation, Prediction, Status
from .preprocess import Box
from .regions import Region, load_regions, with_settings
from .sinks.base import Sink
from .smoothing import Smoother

log = logging.getLogger(__name__)


# -- counters -----------------------------------------------------------------------------------


class _Rate:
    """Events per second over the last `span` seconds."""

    def __init__(self, span: float = 5.0) -> None:
        self.span = span
        self._t: collections.deque[float] = collections.deque(maxlen=2048)
        self._lock = threading.Lock()  # written by the pipeline thread, read by HTTP/daemon threads

    def add(self, t: float) -> None:
        with self._lock:
            self._t.append(t)

    def per_second(self, now: float) -> float:
        with self._lock:
            recent = [t for t in self._t if now - t <= self.span]
        if len(recent) < 2 or recent[-1] <= recent[0]:
            return 0.0
        return (len(recent) - 1) / (recent[-1] - recent[0])


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else 0.0


class RegionTap(Protocol):
    """Sees each region's classification on the pipeline thread, right after it (the engine still
    holds that crop's embedding): the teaching controller keeps recent crops and unsure frames."""

    def seen(self, region: str, frame: Frame, roi: Box, clf: Classifier, res: Result, label: Prediction) -> None: ...


class FrameOutcome(NamedTuple):
    """One classification attempt, as the fleet's health window sees it (fleet/health.Outcome)."""

    at: float  # monotonic
    generation: int  # which loaded model: each swap_model gives the next number; swap_back restores one
    ok: bool
    invoke_ms: float
    label: str  # this frame's own top-1 ("" when it failed)
    error: str  # why it failed ("" when ok)


OUTCOMES_MAX = 3000  # a few minutes of frames: the window and the previous model's recent past


@dataclass(frozen=True)
class _Swap:
    classifier: Classifier | None  # None: keep the one running
    model_name: str
    regions: list[Region] | None = None  # None: keep the regions as they are
    generation: int | None = None  # None: the same model (settings, the Edge TPU back)
    version: int | None = None  # the fleet version of the model (with a generation)
    keep_previous: bool = False  # keep the replaced classifier loaded for swap_back


@dataclass(frozen=True)
class _Replaced:
    """The model a fleet swap replaced, still loaded: what `swap_back` restores."""

    swap: _Swap
    model_cfg: ModelConfig | None
    by: int  # the generation that replaced it


class Pipeline:
    """Owns the classifying thread. `publish` of every sink is called on this thread."""

    def __init__(
        self,
        capture: Capture,
        classifier: Classifier,
        sinks: Sequence[Sink],
        cfg: PipelineConfig | None = None,
        top_k: int = 5,
        *,
        stall_s: float = 5.0,
        model: ModelConfig | None = None,
        regions: Sequence[Region] = (),
        model_version: int | None = None,
    ) -> None:
        self.capture = capture
        self._model_cfg = model  # what `classifier` was loaded from: the Edge TPU fallback needs it
        self._replaced_cfg: ModelConfig | None = model  # what the model of the last swap_model replaced
        self._degraded: str | None = None
        self.cfg = cfg or PipelineConfig()
        self.top_k = top_k
        self.stall_s = stall_s
        self._clf = classifier
        self._model_name = classifier.engine.model.path.name
        self._sinks: tuple[Sink, ...] = tuple(sinks)
        self._smoother = Smoother(self.cfg.smoothing, self.cfg.window, self.cfg.min_score)
        self._pending: _Swap | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._first = threading.Event()
        self._ended = threading.Event()
        self._thread: threading.Thread | None = None
        self._started_mono = time.monotonic()
        # counters (written by the pipeline thread, read by status())
        self.classified = 0
        self.label_changes = 0
        self.errors = 0
        self.reloads = 0
        self.reload_failures = 0
        self.invokes = 0
        self._regions: list[Region] = list(regions)
        self._region_swaps: dict[str, Classifier] = {}  # a region's new head (teaching), applied next frame
        self._tap: RegionTap | None = None
        self.last_classified_mono: float | None = None
        self.last_observation: Observation | None = None
        self.crashed: Exception | None = None
        self._ages_ms: collections.deque[float] = collections.deque(maxlen=1000)
        self._invoke_ms: collections.deque[float] = collections.deque(maxlen=1000)
        self._stats_lock = threading.Lock()  # the deques are read from other threads (status)
        self._rate = _Rate()
        self._warned: set[str] = set()
        self._generation = 0
        self._next_generation = 0
        self._model_version = model_version
        self._replaced: _Replaced | None = None
        self._outcomes: collections.deque[FrameOutcome] = collections.deque(maxlen=OUTCOMES_MAX)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("pipeline already started")
        self._started_mono = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="pipeline", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop classifying and join the thread (sinks and capture are stopped by their owner)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("pipeline thread did not stop within %.1f s", timeout)

    def wait_first(self, timeout: float) -> bool:
        """True once the first frame has been classified."""
        return self._first.wait(timeout)

    @property
    def ended(self) -> bool:
        """The source has no more frames (a file without loop) and the last one was classified."""
        return self._ended.is_set()

    @property
    def classifier(self) -> Classifier:
        """The classifier in use (after a reload, once the pipeline thread has swapped it in)."""
        return self._clf

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def model_version(self) -> int | None:
        """The fleet version of the model that classifies (None: not known)."""
        return self._model_version

    @property
    def generation(self) -> int:
        """Which model classifies: the generation of the last swap applied on the pipeline thread."""
        return self._generation

    @property
    def sinks(self) -> tuple[Sink, ...]:
        return self._sinks

    # -- changes while running (called from the daemon's main thread) ----------------------------
    def reload(
        self, model: ModelConfig, regions: list[RegionConfig] | None = None, *, version: int | None = None
    ) -> bool:
        """Load and warm up `model` (and the regions' models) here, then hand them to the pipeline
        thread. A model that does not load is refused with one log line and the running ones stay."""
        try:
            self.swap_model(model, regions, version=version)
        except EdgeResnetError as e:
            log.error("new model refused, keeping %s: %s", self._model_name, e)
            return False
        return True

    def swap_model(
        self,
        model: ModelConfig,
        regions: list[RegionConfig] | None = None,
        *,
        version: int | None = None,
        check: Callable[[Classifier], None] | None = None,
        keep_previous: bool = False,
    ) -> int:
        """`reload` that raises: load, warm up and `check` the model here (an EdgeResnetError refuses
        it, the running model stays), hand it to the pipeline thread, and return its generation.
        `keep_previous`: the replaced model stays loaded until `forget_previous` (for `swap_back`)."""
        try:
            loaded = None if regions is None else load_regions(regions, model, self.cfg)
            clf = loaded[0].classifier if loaded else load_classifier(model)
            if check is not None:
                check(clf)
        except EdgeResnetError:
            self.reload_failures += 1
            raise
        with self._lock:
            self._next_generation += 1
            gen = self._next_generation
            self._pending = _Swap(clf, Path(model.path).name, loaded, gen, version, keep_previous)
            self._replaced_cfg = self._model_cfg
            self._model_cfg = model
            self._degraded = None
        self.reloads += 1
        log.info("model %s loaded (%s); swapping it in", Path(model.path).name, clf.engine.describe())
        return gen

    def swap_back(self, generation: int) -> bool:
        """Undo the swap that gave `generation` (kept with keep_previous): the replaced model classifies
        again from the next frame, nothing loaded, under its own generation (its frames before and
        after are one record). False when that model is no longer held."""
        with self._lock:
            pending = self._pending
            if pending is not None and pending.generation == generation:  # not swapped in yet: cancel it
                self._pending = None
                self._model_cfg = self._replaced_cfg
                return True
            r = self._replaced
            if r is None or r.by != generation or self._generation != generation:
                return False
            self._pending = dataclasses.replace(r.swap, keep_previous=False)  # its own generation again
            self._model_cfg = r.model_cfg
            self._replaced = None
            self._degraded = None
        log.warning("swapping %s back in", r.swap.model_name)
        return True

    def forget_previous(self, generation: int) -> None:
        """The swap that gave `generation` is final: let the replaced model go (memory)."""
        with self._lock:
            if self._replaced is not None and self._replaced.by == generation:
                self._replaced = None

    def outcomes(self, generation: int | None = None, since: float | None = None) -> list[FrameOutcome]:
        """Recent classification attempts, of one generation and/or since a monotonic time."""
        with self._stats_lock:
            got = list(self._outcomes)
        return [o for o in got if (generation is None or o.generation == generation)
                and (since is None or o.at >= since)]  # fmt: skip

    @property
    def degraded(self) -> str | None:
        """Why the pipeline runs in a lesser mode (the Edge TPU failed, its CPU twin runs), or None."""
        return self._degraded

    def retry_accelerator(self) -> bool:
        """While degraded: try the configured Edge TPU model again (called periodically by the daemon,
        on its thread). Success swaps it back in; failure stays quiet (one line was logged already)."""
        model = self._model_cfg
        if self._degraded is None or model is None:
            return False
        clf = retry_edgetpu(model)
        if clf is None:
            return False
        with self._lock:
            self._pending = _Swap(clf, Path(model.path).name)
            self._degraded = None
        log.warning("Edge TPU is back: %s", clf.engine.describe())
        return True

    def _fall_back_to_cpu(self, error: Exception) -> None:
        """The Edge TPU failed mid-run (delegate error, USB re-enumeration): run the CPU twin if there
        is one; the daemon retries the Edge TPU periodically."""
        clf, self._degraded, kind = cpu_fallback(self._model_cfg, self._clf.engine.model.path, error)
        if clf is None:
            self._warn_once(f"tpu-{kind}", self._degraded)
            return
        self._clf, self._model_name = clf, clf.engine.model.path.name
        log.error("%s", self._degraded)

    def update_settings(self, cfg: PipelineConfig, top_k: int) -> None:
        with self._lock:
            self.cfg = cfg
            self.top_k = top_k
            self._smoother = Smoother(cfg.smoothing, cfg.window, cfg.min_score)
            # the regions' smoothers too, including those of a reload not yet swapped in
            pending = self._pending or _Swap(None, "")
            regions = pending.regions if pending.regions is not None else self._regions
            self._pending = dataclasses.replace(pending, regions=with_settings(regions, cfg))

    def set_tap(self, tap: RegionTap | None) -> None:
        self._tap = tap

    def swap_region(self, name: str, clf: Classifier) -> None:
        """A region's new classifier (a retrained head on the same engine), from any thread."""
        with self._lock:
            self._region_swaps[name] = clf

    @property
    def regions(self) -> list[Region]:
        return list(self._regions)

    @property
    def settled(self) -> bool:
        """No reload waits to be swapped in (the regions' engines are the ones that will run)."""
        with self._lock:
            return self._pending is None

    def set_sinks(self, sinks: Sequence[Sink]) -> None:
        self._sinks = tuple(sinks)

    def set_capture(self, capture: Capture) -> None:
        self.capture = capture

    # -- the pipeline thread ---------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except Exception as e:  # a bug: say so loudly; the daemon sees `crashed` and exits non-zero
            log.exception("pipeline thread crashed")
            self.crashed = e

    def _loop(self) -> None:
        next_due = 0.0
        while not self._stop.is_set():
            with self._lock:
                swap, self._pending = self._pending, None
                cfg, top_k, smoother = self.cfg, self.top_k, self._smoother
            if swap is not None:
                self._apply(swap)
                smoother.reset()
            if self._region_swaps:
                with self._lock:
                    swaps, self._region_swaps = self._region_swaps, {}
                for r in self._regions:
                    new = swaps.get(r.name)
                    if new is not None and new.engine is r.classifier.engine:  # else made for a reloaded-away engine
                        r.classifier = new
                        r.smoother.reset()
            if cfg.max_fps:
                wait = next_due - time.monotonic()
                if wait > 0 and self._stop.wait(wait):
                    break
            capture = self.capture
            frame = capture.get(timeout=0.25)
            if frame is None:
                if capture.finished():
                    self._ended.set()
                    return
                continue
            if cfg.max_fps:
                next_due = time.monotonic() + 1.0 / cfg.max_fps
            if self._regions:
                done = [self._classify(frame, r.classifier, r.smoother, r.roi, top_k, r.model_name, r.name)
                        for r in self._regions]
                if not any(done):
                    continue
            elif not self._classify(frame, self._clf, smoother, cfg.roi, top_k, self._model_name, None):
                continue
            now = time.monotonic()
            self.classified += 1
            self.last_classified_mono = now
            self._rate.add(now)
            self._first.set()

    def _apply(self, swap: _Swap) -> None:
        """On the pipeline thread: the swap's model (and regions) classify from now on."""
        if swap.generation is not None and swap.generation != self._generation:
            replaced = _Swap(self._clf, self._model_name, self._regions if swap.regions is not None else None,
                             self._generation, self._model_version)  # fmt: skip
            kept = _Replaced(replaced, self._replaced_cfg, swap.generation) if swap.keep_previous else None
            with self._lock:
                self._replaced = kept
            self._generation, self._model_version = swap.generation, swap.version
        if swap.classifier is not None:
            self._clf, self._model_name = swap.classifier, swap.model_name
        if swap.regions is not None:
            self._regions = swap.regions

    def _classify(
        self, frame: Frame, clf: Classifier, smoother: Smoother, roi: Box | None, top_k: int, model_name: str,
        region: str | None,
    ) -> bool:
        """One crop of `frame` through `clf` and `smoother` to every sink; False when it failed."""
        try:
            res = clf.classify(frame.image, k=top_k, roi=roi)
        except ConfigError as e:  # region of interest outside this camera's frame
            self._warn_once(f"roi:{region}", f"{e}; classifying the whole frame")
            res = clf.classify(frame.image, k=top_k)
        except Exception as e:  # an interpreter failing mid-run: count, report, keep going
            self.errors += 1
            why = str(e).splitlines()[0][:160] if str(e) else ""
            self._outcome(region, False, 0.0, "", f"{type(e).__name__}: {why}")
            if clf.engine.device == "edgetpu" and region is None:
                self._fall_back_to_cpu(e)
                return False
            self._warn_once(f"classify:{type(e).__name__}", f"classifying frame {frame.seq} failed: {e}")
            return False
        self.invokes += 1
        self._outcome(region, True, res.latency_ms, res.top.label, "")
        label, changed = smoother.update(res.probs, clf.labels, clf.label_offset)
        if region is not None and roi is not None and self._tap is not None:
            try:
                self._tap.seen(region, frame, roi, clf, res, label)
            except Exception as e:  # the teaching side must never stop classification
                self._warn_once(f"tap:{type(e).__name__}", f"teaching: {e}")
        obs = Observation(
            frame=frame,
            top_k=res.predictions,
            label=label,
            changed=changed,
            invoke_ms=res.latency_ms,
            model=model_name,
            classified_at=time.time(),
            region=region,
            roi=roi if region is not None else None,
        )
        with self._stats_lock:
            self._ages_ms.append((time.monotonic() - frame.captured_mono) * 1000.0)
            self._invoke_ms.append(res.latency_ms)
        for sink in self._sinks:
            try:
                sink.publish(obs)
            except Exception as e:  # a sink bug must not stop classification
                self._warn_once(f"sink:{sink.name}", f"sink {sink.name} failed to take a frame: {e}")
        self.label_changes += int(changed)
        self.last_observation = obs
        return True

    def _outcome(self, region: str | None, ok: bool, invoke_ms: float, label: str, error: str) -> None:
        """Keep one attempt a frame (the whole frame's, or the first region's) for the health window."""
        if region is not None and (not self._regions or region != self._regions[0].name):
            return
        with self._stats_lock:
            self._outcomes.append(FrameOutcome(time.monotonic(), self._generation, ok, invoke_ms, label, error))

    def _warn_once(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s (reported once)", msg)
        else:
            log.debug("%s", msg)

    # -- status ----------------------------------------------------------------------------------
    def frame_age_ms(self) -> tuple[float, float]:
        """Frame age at publish (capture -> handed to the sinks), p50 and p99 in milliseconds."""
        with self._stats_lock:
            ages = list(self._ages_ms)
        return percentile(ages, 50), percentile(ages, 99)

    def invoke_ms(self) -> tuple[float, float]:
        with self._stats_lock:
            t = list(self._invoke_ms)
        return percentile(t, 50), percentile(t, 99)

    def status(self) -> Status:
        now = time.monotonic()
        cs = self.capture.stats()
        age50, age99 = self.frame_age_ms()
        inv50, inv99 = self.invoke_ms()
        since = now - self.last_classified_mono if self.last_classified_mono is not None else None
        healthy = False
        if cs.state is not CaptureState.RUNNING:
            reason = cs.reason
        elif since is None:
            reason = f"starting: waiting for the first frame from {self.capture.source.description}"
        elif since > self.stall_s:
            reason = f"no frame classified for {since:.1f} s"
        elif cs.reason != "ok":
            reason = cs.reason
        else:
            healthy, reason = True, "ok"
        if healthy and self._degraded:
            reason = f"degraded: {self._degraded}"
        if healthy:  # a sink that cannot do its job (e.g. the MQTT event queue on a full disk) says so here
            sick = [why for ok, why in self._sink_states() if not ok]
            if sick:
                healthy, reason = False, sick[0]
        obs = self.last_observation
        eng = self._clf.engine
        counters = {
            "frames_captured_total": float(cs.captured),
            "frames_dropped_total": float(cs.dropped),
            "frames_classified_total": float(self.classified),
            "capture_fps": round(cs.fps, 2),
            "inference_fps": round(self._rate.per_second(now), 2),
            "frame_age_p50_ms": round(age50, 2),
            "frame_age_p99_ms": round(age99, 2),
            "invoke_p50_ms": round(inv50, 2),
            "invoke_p99_ms": round(inv99, 2),
            "label_changes_total": float(self.label_changes),
            "invokes_total": float(self.invokes),
            "regions": float(len(self._regions)),
            "classify_errors_total": float(self.errors),
            "camera_reconnects_total": float(cs.reconnects),
            "model_reloads_total": float(self.reloads),
            "model_reload_failures_total": float(self.reload_failures),
            "last_frame_age_seconds": round(cs.last_frame_age_s, 3) if cs.last_frame_age_s is not None else -1.0,
            "uptime_seconds": round(now - self._started_mono, 1),
        }
        if obs is not None:
            counters["score"] = round(obs.label.score, 4)
        counters["source_up"] = 1.0 if cs.state is CaptureState.RUNNING else 0.0
        counters["degraded"] = 1.0 if self._degraded else 0.0
        for part in (self.capture.source, *self._sinks):
            extra = getattr(part, "counters", None)  # a source or sink may add its own counters to /metrics
            if callable(extra):
                try:
                    counters.update({k: float(v) for k, v in extra().items()})
                except Exception as e:
                    log.debug("counters of %s: %s", getattr(part, "name", None) or type(part).__name__, e)
        # static facts only: these become labels of one Prometheus info metric
        labels: dict[str, Any] = {
            "model": self._model_name,
            "device": eng.device,
            "delegate": eng.delegate,
            "source": self.capture.source.description,
        }
        if self._model_version is not None:  # the fleet's version of the model (MQTT state: model_version)
            labels["model_version"] = self._model_version
        return Status(healthy=healthy, reason=reason, counters=counters, labels=labels)

    def _sink_states(self) -> list[tuple[bool, str]]:
        out = []
        for sink in self._sinks:
            try:
                out.append(sink.healthy())
            except Exception as e:
                out.append((False, f"{sink.name}: {e}"))
        return out

    def sink_health(self) -> dict[str, str]:
        """name -> the sink's own words about its health (e.g. "mqtt broker ... down for 12 s")."""
        out = {}
        for sink in self._sinks:
            try:
                ok, why = sink.healthy()
            except Exception as e:
                ok, why = False, str(e)
            out[sink.name] = why or ("ok" if ok else "unhealthy")
        return out

    def status_line(self) -> str:
        """One line for systemd's STATUS= and the logs."""
        st = self.status()
        c = st.counters
        obs = self.last_observation
        label = obs.label.label.split(",")[0] if obs is not None else "-"
        head = "" if st.healthy else f"{st.reason} | "
        rates = (  # no rate before one was measured: the ready line comes after the first frame
            f"{c['inference_fps']:.1f} fps inference, {c['capture_fps']:.1f} fps capture | "
            if c["inference_fps"] or c["capture_fps"]
            else ""
        )
        sensor = (  # the Raspberry Pi AI Camera: the network's time on the sensor, frames that came without it
            f" | dnn {c['imx500_dnn_ms']:.1f} ms, no tensor {int(c.get('imx500_frames_without_tensor_total', 0))}"
            if "imx500_dnn_ms" in c
            else ""
        )
        return (
            f"{head}{label} ({c.get('score', 0.0):.2f}) | {rates}age p50 {c['frame_age_p50_ms']:.0f} ms | "
            f"dropped {int(c['frames_dropped_total'])}{sensor}"
        )
