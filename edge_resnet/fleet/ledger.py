"""The job ledger: what this device has done with install commands, kept in
`<state_dir>/fleet/ledger.json` so that a restart (or `kill -9`, or a power cut) knows which model is
current, which versions went bad, and which job to resume.

Every change is written whole to a temporary file, fsynced and renamed over the old one, so a
reader (or the next start) sees the old ledger or the new one, never half. The ledger is capped
(jobs, bad versions, reason length), so it cannot grow without bound on a device that lives for
years. A write that fails (full disk, read-only card) raises one LedgerError with the fix; the
caller refuses the job rather than run something it could not record.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomicwrite import write_atomic
from ..errors import EdgeResnetError
from .job import BadCommand, InstallCommand, JobStatus, Known, Phase

log = logging.getLogger(__name__)

FORMAT = 1
LEDGER_NAME = "ledger.json"
MAX_JOBS = 200  # finished jobs beyond this are forgotten, oldest first (the version rule still holds)
MAX_BAD = 1000


class LedgerError(EdgeResnetError):
    """The ledger cannot be written (full disk, read-only state directory)."""


@dataclass(frozen=True)
class Installed:
    """A model the fleet installed (or the configured one it replaced): enough to run it again."""

    version: int | None
    path: str
    sha256: str = ""
    job_id: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "path": self.path, "sha256": self.sha256, "job_id": self.job_id}

    @classmethod
    def from_json(cls, d: Any) -> Installed | None:
        if not isinstance(d, dict) or not isinstance(d.get("path"), str):
            return None
        v = d.get("version")
        return cls(v if isinstance(v, int) and not isinstance(v, bool) else None, d["path"], str(d.get("sha256", "")),
                   str(d.get("job_id", "")))  # fmt: skip


@dataclass(frozen=True)
class JobRecord:
    command: InstallCommand
    status: JobStatus
    phase: Phase

    def to_json(self) -> dict[str, Any]:
        return {"command": self.command.to_json(), "status": self.status.to_json(), "phase": self.phase.value}

    @classmethod
    def from_json(cls, d: Any) -> JobRecord:
        return cls(InstallCommand.from_json(d["command"]), JobStatus.from_json(d["status"]), Phase(d["phase"]))


class Ledger:
    """The ledger in memory and on disk; every method is safe from any thread."""

    def __init__(self, fleet_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(fleet_dir)
        self.path = self.dir / LEDGER_NAME
        self._lock = threading.RLock()
        self.current: Installed | None = None  # the fleet model that runs (None: the configured one)
        self.previous: Installed | None = None  # what ran before it (the rollback target after a restart)
        self.bad: dict[int, str] = {}  # version -> why it was rolled back
        self.jobs: OrderedDict[str, JobRecord] = OrderedDict()  # oldest first
        self.latest_job: str | None = None
        self._load()

    # -- reading ----------------------------------------------------------------------------------
    def _load(self) -> None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except (OSError, UnicodeDecodeError) as e:
            log.error("fleet: cannot read %s (%s); starting with an empty job ledger", self.path, e)
            return
        try:
            d = json.loads(text)
            if not isinstance(d, dict) or d.get("format") != FORMAT:
                raise ValueError(f"format is {d.get('format') if isinstance(d, dict) else type(d).__name__!r}")
            self.current = Installed.from_json(d.get("current"))
            self.previous = Installed.from_json(d.get("previous"))
            self.bad = {int(k): str(v) for k, v in dict(d.get("bad_versions", {})).items()}
            for raw in d.get("jobs", []):
                rec = JobRecord.from_json(raw)
                self.jobs[rec.command.job_id] = rec
            latest = d.get("latest_job")
            self.latest_job = latest if isinstance(latest, str) and latest in self.jobs else None
        except (ValueError, KeyError, TypeError, BadCommand) as e:
            aside = self.path.with_name(f"{LEDGER_NAME}.unreadable-{int(time.time())}")
            log.error("fleet: %s is unreadable (%s); moved aside to %s, starting with an empty ledger",
                      self.path, e, aside.name)  # fmt: skip
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            self.current = self.previous = None
            self.bad, self.jobs, self.latest_job = {}, OrderedDict(), None

    def known(self, installed_version: int | None) -> Known:
        with self._lock:
            return Known({k: r.status for k, r in self.jobs.items()}, self.latest_job, installed_version,
                         dict(self.bad))  # fmt: skip

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            return self.jobs.get(job_id)

    def unfinished(self) -> list[JobRecord]:
        """Jobs a restart must finish, in the order they arrived."""
        with self._lock:
            return [r for r in self.jobs.values() if r.phase is not Phase.DONE]

    # -- writing ----------------------------------------------------------------------------------
    def put(
        self,
        rec: JobRecord,
        *,
        installed: tuple[Installed, Installed | None] | None = None,
        bad: tuple[int, str] | None = None,
    ) -> None:
        """Record a job's new step, and make it the latest job (whose status is the published one);
        with it, in the same write, a new current model (and the previous one) or a bad version."""
        with self._lock:
            self.jobs[rec.command.job_id] = rec
            self.jobs.move_to_end(rec.command.job_id)
            self.latest_job = rec.command.job_id
            if installed is not None:
                self.current, self.previous = installed
            if bad is not None:
                self.bad[bad[0]] = bad[1][:300]
                while len(self.bad) > MAX_BAD:
                    del self.bad[min(self.bad)]
            self._cap()
            self.save()

    def _cap(self) -> None:
        done = [k for k, r in self.jobs.items() if r.phase is Phase.DONE and k != self.latest_job]
        for k in done[: max(0, len(self.jobs) - MAX_JOBS)]:
            del self.jobs[k]

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {
                "format": FORMAT,
                "current": self.current.to_json() if self.current else None,
                "previous": self.previous.to_json() if self.previous else None,
                "bad_versions": {str(k): v for k, v in sorted(self.bad.items())},
                "latest_job": self.latest_job,
                "jobs": [r.to_json() for r in self.jobs.values()],
            }

    def save(self) -> None:
        """Atomically (atomicwrite): the old ledger or the new one, never half; the rename fsynced too."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            text = json.dumps(self.to_json(), indent=1)
            write_atomic(self.path, text, mode=0o600, prefix=".ledger-", sync_dir=True)  # 0600: the daemon's own
        except OSError as e:
            raise LedgerError(
                f"cannot write the fleet job ledger {self.path} ({e.strerror or e}); free space on that disk or "
                "make the state directory writable; the running model stays"
            ) from None
