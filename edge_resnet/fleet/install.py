"""One install job, step by step: queued -> downloading -> verifying -> (swap) -> verifying "health
window" -> applied, or rolled_back / rejected with the reason. Every step is written to the ledger
first and then published, so a restart goes on from where the job was: a download resumes, a job
that was in its health window when the process died is rolled back (its model may be what killed
it) and its version marked bad.

The side effects that touch the daemon (which model runs, signature check, swap, the frames a model
classified, swap back) come through `Effects`, so the whole state machine runs in tests with a fake;
fleet/swap.py is the real one. The rules and the health verdict are pure (job.py, health.py).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from ..atomicwrite import fsync_dir
from ..errors import EdgeResnetError
from .fetch import FetchFailed, FetchRefused, FetchStopped, fetch, start_delay
from .health import Baseline, Outcome, Rules, baseline, judge
from .job import JobState, JobStatus, Phase, version_problem
from .ledger import Installed, JobRecord, Ledger, LedgerError

log = logging.getLogger(__name__)

POLL_S = 0.2  # how often the health window looks at the new model's frames
PROGRESS_EVERY_S = 1.0  # at most one `downloading` status a second (and one per 10%)


@dataclass(frozen=True)
class Running:
    """The model that classifies now."""

    version: int | None
    path: str


@dataclass(frozen=True)
class Swapped:
    """A model swapped in and under watch."""

    generation: int
    started: float  # monotonic, when it was handed to the pipeline
    measured_ms: float | None  # the bundle's own measured invoke latency, if it carries one
    previous: Running
    previous_outcomes: Sequence[Outcome] = field(default_factory=list)  # the replaced model's recent frames
    previous_measured_ms: float | None = None  # the replaced bundle's measured latency, if it carries one


class Effects(Protocol):
    def running(self) -> Running: ...

    def verify(self, path: Path) -> int | None:
        """The version a trusted signature gives the model (None: unsigned, and the policy allows it);
        raises an EdgeResnetError to refuse it."""

    def swap_in(self, path: Path, version: int) -> Swapped:
        """Load, check (golden images) and swap in; an EdgeResnetError means it never ran."""

    def outcomes(self, swapped: Swapped) -> Sequence[Outcome]: ...

    def swap_back(self, swapped: Swapped) -> None: ...

    def settle(self, swapped: Swapped) -> None:
        """The swap is final (the replaced model may be let go)."""


Publish = Callable[[JobStatus], None]


def model_name(version: int, sha256: str) -> str:
    return f"v{version}-{sha256[:12]}.tflite"


@dataclass
class Installer:
    """Runs jobs (one at a time: the agent's worker thread calls `run`)."""

    ledger: Ledger
    effects: Effects
    publish: Publish
    rules: Rules
    start_delay_max_s: float = 30.0
    stop: threading.Event = field(default_factory=threading.Event)
    rng: random.Random = field(default_factory=random.Random)
    poll_s: float = POLL_S

    @property
    def downloads(self) -> Path:
        return self.ledger.dir / "downloads"

    @property
    def models(self) -> Path:
        return self.ledger.dir / "models"

    # -- steps ------------------------------------------------------------------------------------
    def _status(self, rec: JobRecord, state: JobState, reason: str = "", progress: int | None = None,
                previous: int | None = None) -> JobStatus:  # fmt: skip
        prev = previous if previous is not None else (self.ledger.previous.version if self.ledger.previous else None)
        return JobStatus(rec.command.job_id, state, rec.command.version, reason,
                         rec.status.progress if progress is None else progress, self.effects.running().version,
                         prev)  # fmt: skip

    def _step(self, rec: JobRecord, status: JobStatus, phase: Phase,
              installed: tuple[Installed, Installed | None] | None = None, bad: tuple[int, str] | None = None
              ) -> JobRecord:  # fmt: skip
        """Write the step to the ledger, then publish it. A ledger that cannot be written ends the job
        (rejected, with why): what is not recorded must not run."""
        new = JobRecord(rec.command, status, phase)
        try:
            self.ledger.put(new, installed=installed, bad=bad)
        except LedgerError as e:
            log.error("fleet: %s", e)
            failed = replace(status, state=JobState.REJECTED, reason=str(e))
            self.publish(failed)
            return JobRecord(rec.command, failed, Phase.DONE)
        self.publish(status)
        return new

    def _end(self, rec: JobRecord, state: JobState, reason: str,
             installed: tuple[Installed, Installed | None] | None = None, bad: tuple[int, str] | None = None
             ) -> JobRecord:  # fmt: skip
        level = logging.INFO if state is JobState.APPLIED else logging.WARNING
        log.log(level, "fleet: job %s (version %d) %s%s", rec.command.job_id, rec.command.version, state.value,
                f": {reason}" if reason else "")  # fmt: skip
        previous = installed[1].version if installed is not None and installed[1] is not None else None
        return self._step(rec, self._status(rec, state, reason, previous=previous), Phase.DONE, installed, bad)

    # -- the job ----------------------------------------------------------------------------------
    def run(self, rec: JobRecord) -> JobRecord:
        """Take the job as far as it goes: to a terminal state, or (asked to stop) to where a restart
        resumes it."""
        cmd = rec.command
        if rec.phase is Phase.DONE:
            return rec
        if rec.phase is Phase.WATCHING:  # the process died while this model was under watch
            why = "the daemon stopped during its health window (the new model may have crashed it); " \
                  "the previous model runs"  # fmt: skip
            return self._end(rec, JobState.ROLLED_BACK, why, bad=(cmd.version, why))
        problem = version_problem(cmd, self.effects.running().version, self.ledger.bad)
        if problem:
            return self._end(rec, JobState.REJECTED, problem)
        part = self.downloads / f"{cmd.job_id}.part"
        got = self.downloads / f"{cmd.job_id}.tflite"
        if rec.phase in (Phase.QUEUED, Phase.DOWNLOADING):
            have = part.stat().st_size if part.exists() else 0
            rec = self._step(rec, self._status(rec, JobState.DOWNLOADING, progress=100 * have // cmd.size),
                             Phase.DOWNLOADING)  # fmt: skip
            if rec.phase is Phase.DONE:
                return rec
            if not start_delay(self.start_delay_max_s, self.stop, self.rng):
                return rec
        try:
            path = fetch(cmd.url, cmd.size, cmd.sha256, part, got, stop=self.stop, progress=self._progress(rec))
        except FetchStopped:
            return rec
        except (FetchRefused, FetchFailed) as e:
            return self._end(rec, JobState.REJECTED, str(e))
        rec = self._step(rec, self._status(rec, JobState.VERIFYING, progress=100), Phase.CHECKING)
        if rec.phase is Phase.DONE:
            return rec
        try:
            signed = self.effects.verify(path)
        except EdgeResnetError as e:
            path.unlink(missing_ok=True)  # the job names the file: the device's own path would only crowd the reason
            return self._end(rec, JobState.REJECTED, str(e).removeprefix(f"{path}: "))
        if signed is not None and signed != cmd.version:
            path.unlink(missing_ok=True)
            return self._end(rec, JobState.REJECTED, f"the bundle is signed as version {signed} but the command says "
                                                     f"{cmd.version}; send the version the bundle carries")  # fmt: skip
        self.models.mkdir(parents=True, exist_ok=True)
        model = self.models / model_name(cmd.version, cmd.sha256)
        os.replace(path, model)
        fsync_dir(self.models)
        return self._watch(rec, model)

    def _progress(self, rec: JobRecord) -> Callable[[int, int], None]:
        last = {"pct": -100, "t": 0.0}

        def progress(have: int, size: int) -> None:
            pct, now = 100 * have // max(1, size), time.monotonic()
            if pct >= last["pct"] + 10 or (now - last["t"] >= PROGRESS_EVERY_S and pct != last["pct"]):
                last["pct"], last["t"] = pct, now
                self.publish(self._status(rec, JobState.DOWNLOADING, progress=pct))

        return progress

    def _watch(self, rec: JobRecord, model: Path) -> JobRecord:
        """Swap the model in, watch its health window, keep it or swap back."""
        cmd = rec.command
        before = self.effects.running()
        rec = self._step(rec, self._status(rec, JobState.VERIFYING, "health window", 100), Phase.WATCHING)
        if rec.phase is Phase.DONE:
            return rec
        try:
            swapped = self.effects.swap_in(model, cmd.version)
        except EdgeResnetError as e:
            model.unlink(missing_ok=True)
            why = f"the model does not run here: {e}"
            return self._end(rec, JobState.REJECTED, why, bad=(cmd.version, why))
        self.publish(self._status(rec, JobState.VERIFYING, "health window", 100, previous=before.version))
        base = baseline(swapped.measured_ms, swapped.previous_outcomes, self.rules, swapped.previous_measured_ms)
        log.info("fleet: version %d swapped in; health window %g s (latency reference: %s, the previous model "
                 "said %d labels)", cmd.version, self.rules.window_s, base.latency_from, base.previous_labels)
        verdict = self._window(swapped, base)
        if verdict is None:  # stopping: the next start runs the previous model (the ledger never named this one)
            return self._end(rec, JobState.ROLLED_BACK, "the daemon stopped during the health window; the previous "
                                                        "model runs after the restart")  # fmt: skip
        healthy, reason = verdict
        if not healthy:
            self.effects.swap_back(swapped)
            model.unlink(missing_ok=True)
            return self._end(rec, JobState.ROLLED_BACK, reason, bad=(cmd.version, reason))
        self.effects.settle(swapped)
        log.info("fleet: version %d passed its health window: %s", cmd.version, reason)
        previous = Installed(before.version, before.path)
        current = Installed(cmd.version, str(model), cmd.sha256, cmd.job_id)
        rec = self._end(rec, JobState.APPLIED, "", installed=(current, previous))
        self._tidy({Path(current.path), Path(previous.path)})
        return rec

    def _window(self, swapped: Swapped, base: Baseline) -> tuple[bool, str] | None:
        while not self.stop.wait(self.poll_s):
            v = judge(self.effects.outcomes(swapped), swapped.started, time.monotonic(), base, self.rules)
            if v.done:
                return v.healthy, v.reason
        return None

    def _tidy(self, keep: set[Path]) -> None:
        """Only the current and the previous model stay in models/ (the disk is small)."""
        try:
            for f in self.models.iterdir():
                if f.is_file() and f not in keep:
                    f.unlink()
        except OSError as e:
            log.warning("fleet: could not tidy %s: %s", self.models, e)
