"""The install job's pure part: the command as it arrives, the job's states and status document, and
the rules that decide what a command does (run it, re-publish what it did, or reject it).

The protocol is fixed (issue 23; the controller and any other tool rely on it): a command
`{"job_id", "url", "sha256", "size", "version", ...}` on `<prefix>/<device>/model/install` or
`<prefix>/group/<group>/model/install`; the job's status, retained, on `<prefix>/<device>/model/job`.
Nothing here opens a file or a socket, so every rule is tested on values.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

from ..errors import EdgeResnetError

JOB_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
COMMAND_MAX_BYTES = 16 * 1024  # a command is a few hundred bytes; anything much bigger is not one
REASON_MAX = 300  # a reason is one line, short enough for a table cell and the ledger's cap


class JobState(Enum):
    """The protocol's states, in the order a job goes through them."""

    QUEUED = "queued"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    APPLIED = "applied"  # swapped in AND its health window passed
    ROLLED_BACK = "rolled_back"  # swapped in, failed its health window, swapped back
    REJECTED = "rejected"  # refused before it ran (rules, download, verification, a model that does not load)

    @property
    def terminal(self) -> bool:
        return self in (JobState.APPLIED, JobState.ROLLED_BACK, JobState.REJECTED)


class Phase(Enum):
    """Where a job is, finer than its state, so that a restart knows how to go on: a queued or
    downloading job resumes, one that died in its health window is rolled back."""

    QUEUED = "queued"
    DOWNLOADING = "downloading"
    CHECKING = "checking"  # downloaded; size, digest and signature being checked
    WATCHING = "watching"  # swapped in, health window running
    DONE = "done"


class Delivery(Enum):
    """How a command reached us: a retained message is re-delivered at every (re)subscribe."""

    LIVE = "live"
    RETAINED = "retained"


class BadCommand(EdgeResnetError):
    """A payload that is not a usable install command; `job_id` when it could be read (so the
    rejection can be published under it)."""

    def __init__(self, reason: str, job_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.job_id = job_id


@dataclass(frozen=True)
class InstallCommand:
    """An install command as the protocol defines it; keys beyond the five are kept in `extra`."""

    job_id: str
    url: str
    sha256: str
    size: int
    version: int
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {**self.extra, "job_id": self.job_id, "url": self.url, "sha256": self.sha256, "size": self.size,
                "version": self.version}  # fmt: skip

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> InstallCommand:
        """From the ledger (written by `to_json`); raises BadCommand like a payload would."""
        return command_from_dict(d, max_bytes=None)


def _one_line(text: str) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= REASON_MAX else line[: REASON_MAX - 3] + "..."


def _int(d: Mapping[str, Any], key: str) -> int | None:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v != int(v):
        return None
    return int(v)


def check_url(url: Any) -> str | None:
    """Why `url` is not one the device fetches (http, https, file:///abs or /abs), or None."""
    if not isinstance(url, str) or not url or len(url) > 2048:
        return "url must be a string of 1..2048 characters"
    if url.startswith("/"):
        return None
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        return None if parts.hostname else f"url {url!r} has no host"
    if parts.scheme == "file":
        return None if parts.path.startswith("/") and parts.netloc in ("", "localhost") else (
            f"url {url!r}: a file URL must be file:///absolute/path"
        )
    return (f"url scheme {parts.scheme or '(none)'!r} is not supported; use http://, https://, file:/// or "
            "/absolute/path")


def command_from_dict(d: Mapping[str, Any], max_bytes: int | None) -> InstallCommand:
    """The rules every command must pass; `max_bytes`: the device's download cap (None: no cap)."""
    job_id = d.get("job_id")
    if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
        raise BadCommand("job_id must be 1..64 characters of letters, digits, '.', '_' or '-'")
    problem = check_url(d.get("url"))
    if problem:
        raise BadCommand(problem, job_id)
    sha = d.get("sha256")
    if not isinstance(sha, str) or not SHA256.fullmatch(sha):
        raise BadCommand("sha256 must be 64 hex digits", job_id)
    size, version = _int(d, "size"), _int(d, "version")
    if size is None or size < 1:
        raise BadCommand("size must be a whole number of bytes >= 1", job_id)
    if version is None or version < 1:
        raise BadCommand("version must be a whole number >= 1", job_id)
    if max_bytes is not None and size > max_bytes:
        raise BadCommand(
            f"announced size {size / 1e6:.1f} MB is over this device's [fleet] max_download_mb "
            f"({max_bytes / 1e6:g} MB)",
            job_id,
        )
    extra = {k: v for k, v in d.items() if k not in ("job_id", "url", "sha256", "size", "version")}
    return InstallCommand(job_id, str(d["url"]), sha.lower(), size, version, extra)


def parse_command(payload: bytes, max_bytes: int) -> InstallCommand | None:
    """A command from an MQTT payload; None for an empty payload (a retained command being cleared)."""
    if not payload:
        return None
    if len(payload) > COMMAND_MAX_BYTES:
        raise BadCommand(f"the command is {len(payload)} bytes; an install command is at most {COMMAND_MAX_BYTES}")
    try:
        d = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as e:
        raise BadCommand(f"the command is not JSON ({e})") from None
    if not isinstance(d, dict):
        raise BadCommand("the command must be a JSON object")
    return command_from_dict(d, max_bytes)


@dataclass(frozen=True)
class JobStatus:
    """One step of a job, as retained on `<prefix>/<device>/model/job`."""

    job_id: str
    state: JobState
    version: int | None
    reason: str = ""
    progress: int = 0  # 0..100 while downloading; 100 once downloaded
    running_version: int | None = None
    previous_version: int | None = None
    ts: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", _one_line(self.reason))
        object.__setattr__(self, "progress", max(0, min(100, int(self.progress))))

    def document(self, device: str, groups: list[str]) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "state": self.state.value,
            "version": self.version,
            "reason": self.reason,
            "device": device,
            "groups": list(groups),
            "progress": self.progress,
            "running_version": self.running_version,
            "previous_version": self.previous_version,
            "ts": round(self.ts, 3),
        }

    def to_json(self) -> dict[str, Any]:
        """For the ledger (the device and groups are added when published)."""
        return self.document("", [])

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> JobStatus:
        return cls(
            job_id=str(d["job_id"]),
            state=JobState(d["state"]),
            version=_int(d, "version"),
            reason=str(d.get("reason", "")),
            progress=_int(d, "progress") or 0,
            running_version=_int(d, "running_version"),
            previous_version=_int(d, "previous_version"),
            ts=float(d.get("ts", 0.0)),
        )


# -- the rules ------------------------------------------------------------------------------------


class Verdict(Enum):
    RUN = "run"  # a new job: queue it
    REPUBLISH = "republish"  # the same job again: say what it did (or is doing), do nothing twice
    IGNORE = "ignore"  # an old job's retained command re-delivered at subscribe: not news
    REJECT = "reject"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str = ""


@dataclass(frozen=True)
class Known:
    """What the ledger knows, as far as the rules need it."""

    jobs: Mapping[str, JobStatus]  # job id -> its last status
    latest_job: str | None  # the job whose status the device published last
    installed_version: int | None  # the running model's version (None: not known)
    bad_versions: Mapping[int, str]  # version -> why it was rolled back


def version_problem(cmd: InstallCommand, installed: int | None, bad: Mapping[int, str]) -> str | None:
    """Why this command's version may not be installed now, or None. Checked when the command
    arrives and again when its job starts (a job queued behind another sees the new version)."""
    if cmd.version in bad:
        return (f"version {cmd.version} was rolled back on this device before ({bad[cmd.version]}); publish a "
                "new version")
    if installed is not None and cmd.version <= installed:
        return (
            f"version {cmd.version} is not newer than the installed version {installed}; versions only go up "
            "(sign the model again with a higher --version)"
        )
    return None


def decide(cmd: InstallCommand, known: Known, delivery: Delivery) -> Decision:
    """What a command does. The same job twice does nothing twice; an old job's command replayed is
    refused (quietly when it is only a retained command re-delivered at subscribe); a bad or
    not-newer version is refused; anything else runs."""
    prior = known.jobs.get(cmd.job_id)
    if prior is not None:
        if cmd.job_id == known.latest_job or not prior.state.terminal:
            return Decision(Verdict.REPUBLISH)
        why = f"job {cmd.job_id} ended {prior.state.value} before (version {prior.version})"
        if delivery is Delivery.RETAINED:
            return Decision(Verdict.IGNORE, why)
        return Decision(Verdict.REJECT, f"{why}; an old command replayed is not run again")
    problem = version_problem(cmd, known.installed_version, known.bad_versions)
    if problem:
        return Decision(Verdict.REJECT, problem)
    return Decision(Verdict.RUN)
