"""The daemon: config -> source -> pipeline -> sinks, signals, and systemd notifications.

Lifecycle
- start: load the model (fatal if it does not load), open the source on the capture thread
  (a missing camera is retried with backoff unless `[source] retry = false`), start the sinks.
- READY=1 once the model is loaded and the first frame is classified (or the camera is missing
  and being retried, so systemd does not time the start out).
- WATCHDOG=1 every quarter of WatchdogSec while the daemon does its job: frames are being
  classified, or the camera is lost and the capture thread is alive and retrying (restarting the
  process would not bring a camera back; a capture thread stuck in a driver call stops the pings).
- STATUS= with label and fps every few seconds.
- SIGHUP: read the config file again and reload the model; a bad config or model is refused and
  the running ones stay. A changed model file (same path, new mtime) is picked up the same way.
- SIGTERM/SIGINT: STOPPING=1, sinks publish `offline`, threads stop, exit 0 within 5 s.
- `[trust]`: every way a model arrives (start, SIGHUP, a file replaced on disk, a fleet install) goes
  through `fleet.trust.check_model`: with `require_signature` an unsigned or untrusted model is
  refused (at start: exit 4; later: one line, the running model goes on), and the version a trusted
  signature gives it is the running model's version (Status label `model_version`).
- `[fleet] enabled`: the fleet agent (fleet/agent.py) takes install commands over MQTT and swaps
  models through the same pipeline reload (fleet/swap.py), under the same model lock as SIGHUP. At
  start, a model the fleet installed and the ledger names current runs instead of `[model] path`
  (if it does not load, the configured one runs); a SIGHUP keeps it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from . import config as configmod
from .capture import Capture, CaptureState
from .config import Config, ModelConfig, RegionConfig
from .errors import ConfigError, EdgeResnetError, HardwareError
from .model import load_classifier
from .notify import Notifier
from .pipeline import Pipeline
from .regions import load_regions
from .sinks.base import Remote, Sink, SinkContext, StatusFn
from .sources import make_source
from .teach import Teacher

if TYPE_CHECKING:
    from .fleet.agent import FleetAgent
    from .fleet.ledger import Ledger
    from .fleetconfig import FleetConfig

log = logging.getLogger(__name__)

STOP_BUDGET_S = 4.0  # SIGTERM -> exit, with margin under systemd's and the tests' 5 s
STATUS_EVERY_S = 5.0
MODEL_POLL_S = 2.0
ACCELERATOR_RETRY_S = 60.0  # while running on the CPU twin, try the Edge TPU again this often
AGENT_STOP_S = 2.0  # a SIGHUP that changes [fleet] waits this long for the running agent to stop
_WAITED_FOR = (CaptureState.LOST, CaptureState.WAITING)  # no frames, and rightly so: READY, watchdog fed

Overrides = Callable[[Config], Config]


def build_sinks(
    cfg: Config,
    status: StatusFn,
    sink_health: Callable[[], dict[str, str]] | None = None,
    remote: Remote | None = None,
) -> list[Sink]:
    """One sink per active table, by its registry factory (each sink module is imported only when
    configured). `sink_health` lets the overlay's /healthz list every sink's own state; `remote` is
    what a sink may ask of the daemon (MQTT: Home Assistant's reload button and model select)."""
    ctx = SinkContext(
        cfg.device_id, Path(cfg.state_dir), status, sink_health, cfg.pipeline.heartbeat_s, remote, cfg.fleet.enabled
    )
    return [configmod.resolve(configmod.SINKS[name].factory)(table, ctx) for name, table in cfg.active_sinks().items()]


def _agent_setup(cfg: Config) -> tuple[Any, ...] | None:
    """What the fleet agent is built from (None: no agent)."""
    return (cfg.fleet, cfg.mqtt, cfg.device_id, cfg.state_dir) if cfg.fleet.enabled else None


def make_capture(cfg: Config) -> Capture:
    s = cfg.source
    return Capture(make_source(s), watchdog_s=s.watchdog_s, retry=s.retry, backoff_max_s=s.backoff_max_s)


def prepare_state_dir(cfg: Config) -> Config:
    """Create the state directory; as a normal user, fall back from /var/lib to ~/.local/state."""
    p = Path(cfg.state_dir)
    try:
        p.mkdir(parents=True, exist_ok=True)
        if os.access(p, os.W_OK):
            return cfg
    except OSError:
        pass
    if cfg.state_dir == configmod.DEFAULT_STATE_DIR:
        alt = configmod.user_state_dir()
        alt.mkdir(parents=True, exist_ok=True)
        log.info("%s is not writable; keeping state in %s", p, alt)
        return dataclasses.replace(cfg, state_dir=str(alt))
    # Not fatal: a full or read-only SD card is a runtime problem, and exit 3 is never restarted by
    # systemd. The MQTT queue reports itself degraded (/healthz, STATUS, metrics) and retries.
    log.warning(
        "state_dir: %s cannot be created or written; the MQTT event queue runs degraded until it can "
        "(check the disk, or set state_dir to a writable folder; systemd: StateDirectory=edge-resnet)",
        p,
    )
    return cfg


def _model_stamp(path: str) -> tuple[float, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime, st.st_size


class Daemon:
    """Runs until SIGTERM/SIGINT, `request_stop()`, the end of a finite source, or a limit."""

    def __init__(
        self,
        cfg: Config,
        *,
        config_path: str | os.PathLike[str] | None = None,
        overrides: Overrides | None = None,
        notifier: Notifier | None = None,
        max_frames: int | None = None,
        duration_s: float | None = None,
        watch_model: bool = True,
    ) -> None:
        self.cfg = cfg
        self.config_path = Path(config_path) if config_path else None
        self.overrides = overrides or (lambda c: c)
        self.notifier = notifier or Notifier()
        self.max_frames = max_frames
        self.duration_s = duration_s
        self.watch_model = watch_model
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._stop_reason = ""
        self.pipeline: Pipeline | None = None
        self.capture: Capture | None = None
        self.sinks: list[Sink] = []
        self.teacher: Teacher | None = None
        self._model_stamp: tuple[float, int] | None = None
        self._refused_stamp: tuple[float, int] | None = None
        self.reloads_done = 0  # SIGHUP reloads handled (tests wait on it)
        self.agent: FleetAgent | None = None
        self._model_lock = threading.RLock()  # SIGHUP, the model file watcher and fleet swaps, one at a time
        self._fleet_model: str | None = None  # the path of the fleet-installed model that runs, if one does

    # -- control from signal handlers or other threads --------------------------------------------
    def request_stop(self, why: str = "stop requested") -> None:
        self._stop_reason = self._stop_reason or why
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.request_reload()
        elif signum == signal.SIGINT and self._stop.is_set():
            raise KeyboardInterrupt  # a second Ctrl-C: do not wait for a clean stop (exit 130)
        else:
            self.request_stop(signal.Signals(signum).name)

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        old: dict[int, Any] = {}
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            old[sig] = signal.signal(sig, self._on_signal)
        return old

    # -- run ------------------------------------------------------------------------------------
    def run(self) -> int:
        old_handlers = self._install_signals()
        try:
            return self._run()
        finally:
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)

    def _run(self) -> int:
        cfg = self.cfg = prepare_state_dir(self.cfg)
        log.info("starting:\n%s", configmod.summary(cfg))
        fleet = self._fleet_enabled(cfg)
        ledger = None
        if fleet is not None:
            from .fleet.ledger import Ledger

            ledger = Ledger(Path(cfg.state_dir) / "fleet")
        regions, clf, version = self._load_start_model(ledger)
        cfg = self.cfg
        log.info("model %s%s", clf.engine.describe(), f", fleet version {version}" if version is not None else "")
        self._model_stamp = _model_stamp(cfg.model.path)
        capture = self.capture = make_capture(cfg)
        pipeline = self.pipeline = Pipeline(
            capture, clf, [], cfg.pipeline, cfg.model.top_k, stall_s=cfg.source.watchdog_s, model=cfg.model,
            regions=regions, model_version=version,
        )
        failure: EdgeResnetError | None = None
        try:
            self.sinks = build_sinks(cfg, pipeline.status, pipeline.sink_health, self._remote())
            self._tell_regions()
            pipeline.set_sinks(self.sinks)
            if regions:  # teaching from the overlay: regions' crops labelled with a click
                self.teacher = Teacher(pipeline, Path(cfg.state_dir))
                pipeline.set_tap(self.teacher)
                self._attach_teacher(self.sinks)
                self.teacher.start()
            for s in self.sinks:
                s.start()
            capture.start()
            pipeline.start()
            if fleet is not None and ledger is not None:
                self._start_agent(fleet, ledger)
            failure = self._loop()
        finally:
            self._shutdown()
        if failure is not None:
            raise failure
        log.info("stopped (%s) after %d frames", self._stop_reason or "done", pipeline.classified)
        return 0

    def _loop(self) -> EdgeResnetError | None:
        assert self.pipeline is not None
        pipeline = self.pipeline
        t_start = time.monotonic()
        ready = False
        next_status = next_ping = next_poll = 0.0
        next_tpu = time.monotonic() + ACCELERATOR_RETRY_S
        wd = self.notifier.watchdog_interval
        tick = 0.05 if self.max_frames else 0.2
        while not self._stop.wait(tick):
            now = time.monotonic()
            capture = pipeline.capture
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
            if capture.error is not None:
                return capture.error
            if capture.state() is CaptureState.FAILED:
                return HardwareError(f"{capture.source.description} failed")
            if pipeline.crashed is not None:
                return EdgeResnetError(
                    f"the pipeline thread crashed ({pipeline.crashed!r}); this is a bug, please report it"
                )
            if pipeline.ended:
                self._stop_reason = "source ended"
                break
            if self.max_frames is not None and pipeline.classified >= self.max_frames:
                self._stop_reason = f"{self.max_frames} frames classified"
                break
            if self.duration_s is not None and now - t_start >= self.duration_s:
                self._stop_reason = f"{self.duration_s:g} s elapsed"
                break
            # READY also when the camera is missing at start and being retried, or waited for (an
            # IMX500 network uploading for minutes): otherwise systemd times the start out and restarts
            # us in a loop, which cannot bring a camera back and starts an upload again.
            if not ready and (pipeline.wait_first(0) or capture.state() in _WAITED_FOR):
                ready = True
                line = pipeline.status_line()
                self.notifier.ready(line)
                if pipeline.wait_first(0):
                    log.info("ready: %s", line)
                else:  # the capture thread logged the loss already: one line per outage
                    log.info("ready; waiting for %s", capture.source.description)
            # wd is already half of WatchdogSec (notify.Notifier): ping twice per wd so the loop's
            # tick never stretches a gap past WatchdogSec/2; "alive" means a frame within wd.
            if wd and now >= next_ping:
                next_ping = now + wd / 2
                if self._alive(wd):
                    self.notifier.watchdog()
            if now >= next_status:
                next_status = now + STATUS_EVERY_S
                self.notifier.status(pipeline.status_line())
            if pipeline.degraded and now >= next_tpu:
                next_tpu = now + ACCELERATOR_RETRY_S
                pipeline.retry_accelerator()
            if self.watch_model and now >= next_poll:
                next_poll = now + MODEL_POLL_S
                self._check_model_file()
        return None

    def _alive(self, window_s: float) -> bool:
        """Doing the job: a frame classified within `window_s`, or the camera lost and being retried, or
        waited for while it says why (capture.py's WAITING), on a capture thread that is alive."""
        assert self.pipeline is not None
        last = self.pipeline.last_classified_mono
        if last is not None and time.monotonic() - last <= window_s:
            return True
        return self.pipeline.capture.state() in _WAITED_FOR and self.pipeline.capture.thread_alive()

    def _shutdown(self) -> None:
        deadline = time.monotonic() + STOP_BUDGET_S
        self.notifier.stopping(f"stopping ({self._stop_reason or 'shutdown'})")

        def left(cap: float) -> float:
            return max(0.1, min(cap, deadline - time.monotonic()))

        if self.agent is not None:  # first: a health window must not judge a stopping pipeline
            self.agent.stop(left(1.0))
        if self.pipeline is not None:
            self.pipeline.stop(left(1.0))
        if self.teacher is not None:
            self.teacher.stop(left(0.5))
        if self.sinks:  # in parallel: each publishes `offline` / flushes within its own timeout
            budget = left(2.5)
            threads = [
                threading.Thread(target=s.stop, args=(budget,), name=f"stop-{s.name}", daemon=True) for s in self.sinks
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(left(budget))
        if self.capture is not None:
            self.capture.stop(left(1.0))
        if self.pipeline is not None and self.pipeline.capture is not self.capture:
            self.pipeline.capture.stop(left(1.0))

    # -- the fleet ---------------------------------------------------------------------------------
    def _fleet_enabled(self, cfg: Config) -> FleetConfig | None:
        f = cfg.fleet
        if not f.enabled:
            return None
        if cfg.mqtt is None:
            raise ConfigError(
                "[fleet] enabled = true needs [mqtt]: install commands come through the broker; add an [mqtt] "
                "table or set [fleet] enabled = false"
            )
        return f

    def _load_start_model(self, ledger: Ledger | None) -> tuple[list[Any], Any, int | None]:
        """The regions and classifier to start with: the fleet's current model when the ledger names
        one (the configured one if it does not load), else `[model] path`; and the model's version."""
        cfg = self.cfg
        current = ledger.current if ledger is not None else None
        if current is not None and current.path != cfg.model.path:
            fleet_cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=current.path))
            try:
                self.trusted_version(current.path, None)  # the fleet's version stands (signed or not)
                self.trust_region_models(fleet_cfg.regions)
                regions = load_regions(fleet_cfg.regions, fleet_cfg.model, fleet_cfg.pipeline)
                clf = regions[0].classifier if regions else load_classifier(fleet_cfg.model)
            except EdgeResnetError as e:
                log.error("fleet: the installed model (version %s) cannot run (%s); running %s instead",
                          current.version, e, cfg.model.path)  # fmt: skip
            else:
                self.cfg, self._fleet_model = fleet_cfg, current.path
                return regions, clf, current.version
        version = self.trusted_version(cfg.model.path, None)  # refused: the daemon does not start (exit 4)
        self.trust_region_models(cfg.regions)
        regions = load_regions(cfg.regions, cfg.model, cfg.pipeline)
        # with regions, the whole-frame classifier is the first region's (its backbone is loaded once)
        clf = regions[0].classifier if regions else load_classifier(cfg.model)
        return regions, clf, version

    def trusted_version(self, path: str | os.PathLike[str], min_version: int | None) -> int | None:
        """Whether the model may run under `[trust]`: the version a trusted signature gives it, None when
        it is unsigned (or signed by a key this device does not know) and the policy lets it run, or
        ModelRefused (one line: why, and the fix). Nothing is read without [trust] keys or the fleet."""
        trust, fleet = self.cfg.trust, self.cfg.fleet
        if not (trust.keys or trust.require_signature or fleet.enabled):
            return None
        from .fleet.trust import check_model, load_policy

        target = self.cfg.model.device if self.cfg.model.device in ("cpu", "edgetpu") else None
        policy = load_policy(trust, self.cfg.state_dir)  # the state dir: the learned heads this device recorded
        m = check_model(path, policy, min_version=min_version, target=target)  # type: ignore[arg-type]
        return m.version if m is not None else None

    def trust_region_models(self, regions: list[RegionConfig]) -> None:
        """A `[[region]] model` arrives like `[model] path`: the same trust check (ModelRefused)."""
        for path in sorted({r.model for r in regions if r.model}):
            self.trusted_version(path, None)

    def _start_agent(self, fleet: FleetConfig, ledger: Ledger) -> None:
        from .fleet.agent import FleetAgent
        from .fleet.swap import ModelSwitch

        assert self.pipeline is not None and self.cfg.mqtt is not None
        pipeline = self.pipeline
        switch = ModelSwitch(
            pipeline,
            lambda: self.cfg.model,
            lambda: self.cfg.regions,
            self._model_lock,
            self._on_switch,
            lambda p: self.trusted_version(p, pipeline.model_version),
            fleet.health_window_s,
        )
        self.agent = FleetAgent(fleet, self.cfg.mqtt, self.cfg.device_id, ledger, switch)
        self.agent.start()

    def _on_switch(self, model: ModelConfig, version: int | None) -> None:
        """A fleet swap (or swap back) happened: the daemon's config names the model that runs now, so
        the file watcher and a SIGHUP keep it."""
        with self._model_lock:
            self.cfg = dataclasses.replace(self.cfg, model=model)
            self._model_stamp = _model_stamp(model.path)
            self._refused_stamp = None
            fleet_dir = Path(self.cfg.state_dir) / "fleet"
            self._fleet_model = model.path if Path(model.path).parent.parent == fleet_dir else None
            if self.teacher is not None:
                self.teacher.retrain_all()

    # -- what sinks may ask (build_sinks' remote) ---------------------------------------------------
    def _remote(self) -> Remote:
        return Remote(self.request_reload, lambda: self.cfg.model.path, self._select_model)

    def _select_model(self, path: Path) -> str | None:
        """A remote model select: the chosen file runs through the reload path (trust check; refused,
        the running model goes on), then the config names it, as after a fleet swap. A SIGHUP re-reads
        `[model] path` from the config file."""
        assert self.pipeline is not None
        with self._model_lock:
            model = dataclasses.replace(self.cfg.model, path=str(path))
            if not self._reload_model(model, self.cfg.regions):
                return f"{path.name} refused (the log says why); {self.pipeline.model_name} runs on"
            self.cfg = dataclasses.replace(self.cfg, model=model)
            self._fleet_model = None
        return None

    # -- reload ------------------------------------------------------------------------------------
    def reload(self) -> bool:
        """SIGHUP: re-read the config (if there is a file), reload the model, apply what changed.
        Anything that fails is refused with one log line; what runs keeps running."""
        before = self.cfg
        with self._model_lock:
            ok = self._reload_locked()
        self._reload_fleet(before)  # outside the lock: an agent's job may be waiting for it to swap a model
        return ok

    def _reload_locked(self) -> bool:
        assert self.pipeline is not None
        self.notifier.reloading()
        try:
            new = self.cfg
            if self.config_path is not None:
                new = prepare_state_dir(self.overrides(configmod.load(self.config_path)))
                if self._fleet_model is not None:  # the fleet's model stays what runs
                    new = dataclasses.replace(new, model=dataclasses.replace(new.model, path=self._fleet_model))
            self._fleet_enabled(new)  # [fleet] on without [mqtt]: refused like any bad config
        except EdgeResnetError as e:
            log.error("config reload refused, keeping the running configuration: %s", e)
            self.notifier.ready(self.pipeline.status_line())
            return False
        ok = self._reload_model(new.model, new.regions)
        if not ok:
            new = dataclasses.replace(new, model=self.cfg.model, regions=self.cfg.regions)
        if new.pipeline != self.cfg.pipeline or new.model.top_k != self.cfg.model.top_k:
            self.pipeline.update_settings(new.pipeline, new.model.top_k)
        if new.source != self.cfg.source:
            ok = self._swap_source(new) and ok
            if not ok:
                new = dataclasses.replace(new, source=self.cfg.source)
        if self._sink_configs(new) != self._sink_configs(self.cfg):
            self._swap_sinks(new)
        self.cfg = new
        self._tell_regions()
        self.reloads_done += 1
        self.notifier.ready(self.pipeline.status_line())
        log.info("reload %s", "done" if ok else "partly refused (see above)")
        return ok

    def _reload_model(self, model: ModelConfig, regions: list[RegionConfig]) -> bool:
        assert self.pipeline is not None
        stamp = _model_stamp(model.path)
        try:  # a signed model may not go back to an older version than the one running
            version = self.trusted_version(model.path, self.pipeline.model_version)
            self.trust_region_models(regions)
        except EdgeResnetError as e:
            self.pipeline.reload_failures += 1
            log.error("new model refused, keeping %s: %s", self.pipeline.model_name, e)
            self._refused_stamp = stamp
            return False
        if version is None and model.path == self.cfg.model.path:
            version = self.pipeline.model_version  # unsigned: a fleet install's version stays with its file
        if self.pipeline.reload(model, regions, version=version):
            if self.teacher is not None:  # the taught heads again, on the new engines
                self.teacher.retrain_all()
            self._model_stamp = stamp
            self._refused_stamp = None
            return True
        self._refused_stamp = stamp
        return False

    def _check_model_file(self) -> None:
        """A model file replaced in place (new mtime/size) is reloaded like on SIGHUP; a refused
        file is not retried (nor logged again) until it changes once more."""
        stamp = _model_stamp(self.cfg.model.path)
        if stamp is None or stamp == self._model_stamp or stamp == self._refused_stamp:
            return
        if time.time() - stamp[0] < 1.0:
            return  # still being written: look again next poll
        with self._model_lock:
            log.info("model file %s changed; reloading it", self.cfg.model.path)
            self._reload_model(self.cfg.model, self.cfg.regions)

    def _swap_source(self, new: Config) -> bool:
        assert self.pipeline is not None
        try:
            capture = make_capture(new)
        except EdgeResnetError as e:
            log.error("new [source] refused, keeping %s: %s", self.pipeline.capture.source.description, e)
            return False
        old = self.pipeline.capture
        capture.start()
        self.pipeline.set_capture(capture)
        self.capture = capture
        old.stop(1.0)
        self.pipeline.stall_s = new.source.watchdog_s
        log.info("source switched to %s", capture.source.description)
        return True

    @staticmethod
    def _sink_configs(cfg: Config) -> tuple[Any, ...]:
        return (cfg.device_id, cfg.state_dir, cfg.active_sinks(), cfg.fleet.enabled)  # fleet: the update entity

    def _reload_fleet(self, before: Config) -> None:
        """After a reload: a changed `[fleet]` (or, while it is on, the `[mqtt]`, device_id or state_dir
        its agent runs with) stops the running agent cleanly and starts one for the new config; turned
        off, the agent leaves the fleet (clears its retained presence) and stops. Unchanged: nothing."""
        if _agent_setup(self.cfg) == _agent_setup(before):
            return
        if self.agent is not None:
            self.agent.stop(AGENT_STOP_S, leave=not self.cfg.fleet.enabled)
            self.agent = None
        fleet = self._fleet_enabled(self.cfg)  # checked when the config was loaded: no ConfigError here
        if fleet is None:
            log.info("fleet: [fleet] is off now; the fleet agent stopped")
            return
        from .fleet.ledger import Ledger

        log.info("fleet: [fleet] changed; starting the fleet agent (groups: %s)", ", ".join(fleet.groups) or "none")
        self._start_agent(fleet, Ledger(Path(self.cfg.state_dir) / "fleet"))

    def _tell_regions(self) -> None:
        """Sinks that keep something per region (MQTT: state topics, Home Assistant's entities) learn
        which `[[region]]`s run now, so a region removed from the config goes from them too."""
        names = [r.name for r in self.cfg.regions]
        for s in self.sinks:
            set_regions = getattr(s, "set_regions", None)
            if callable(set_regions):
                set_regions(names)

    def _attach_teacher(self, sinks: list[Sink]) -> None:
        """The overlay's writing routes go to the teacher (sinks that take a writer: the HTTP sink)."""
        for s in sinks:
            set_writer = getattr(s, "set_writer", None)
            if callable(set_writer):
                set_writer(self.teacher)

    def _swap_sinks(self, new: Config) -> None:
        assert self.pipeline is not None
        try:
            sinks = build_sinks(new, self.pipeline.status, self.pipeline.sink_health, self._remote())
        except EdgeResnetError as e:
            log.error("new sink configuration refused, keeping the running sinks: %s", e)
            return
        old = self.sinks
        self.pipeline.set_sinks([])
        for s in old:
            s.stop(1.5)
        self._attach_teacher(sinks)
        for s in sinks:
            s.start()
        self.sinks = sinks
        self.pipeline.set_sinks(sinks)
        log.info("sinks now: %s", ", ".join(s.name for s in sinks) or "none")
