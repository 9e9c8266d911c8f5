"""Rollout in waves through the broker (issue 23 part 3): a canary wave first, then waves of a share of
the group; each device gets its own install command and answers with its retained job status; a
failure gate stops the rollout before the rest of the group is asked. Like AWS IoT Jobs' abort
criteria and hawkBit's group thresholds, with the broker as the only server.

The decisions are pure functions (waves, outcome of a job status, the gate); `rollout` puts them on a
FleetView and prints one line per wave."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from ..errors import InputError
from .view import DeviceDocs, FleetView

JOB_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
TERMINAL = ("applied", "rolled_back", "rejected")
ONLINE = "online"


@dataclass(frozen=True)
class Model:
    """What every device is told to install (the protocol's install command)."""

    url: str
    sha256: str
    size: int
    version: int

    def job_id(self) -> str:
        """The same model gives the same job id, so a rollout run again is answered, not installed again
        (the device re-publishes the status it has for that job)."""
        return f"v{self.version}-{self.sha256[:16]}"


@dataclass(frozen=True)
class Plan:
    group: str
    canary: int = 1
    step_percent: float = 10.0
    max_failed_percent: float = 10.0
    wave_timeout_s: float = 600.0
    job_id: str | None = None  # default: Model.job_id()

    def __post_init__(self) -> None:
        if self.canary < 1:
            raise InputError(f"--canary {self.canary}: the canary wave needs at least 1 device")
        if not 0 < self.step_percent <= 100:
            raise InputError(f"--step-percent {self.step_percent}: give a share of the group in (0, 100]")
        if not 0 <= self.max_failed_percent <= 100:
            raise InputError(f"--max-failed-percent {self.max_failed_percent}: give 0..100")
        if self.wave_timeout_s <= 0:
            raise InputError(f"--wave-timeout {self.wave_timeout_s}: give seconds > 0")
        if self.job_id is not None and not JOB_ID.fullmatch(self.job_id):
            raise InputError(f"--job-id {self.job_id!r}: use 1..64 letters, digits, '.', '_' or '-'")


class Outcome(Enum):
    """How one device's part of the rollout ended."""

    APPLIED = "applied"
    ROLLED_BACK = "rolled_back"
    REJECTED = "rejected"
    NO_ANSWER = "no_answer"  # no status for this job within the wave timeout
    STUCK = "stuck"  # answered, but not in a terminal state within the wave timeout

    @property
    def failed(self) -> bool:
        return self is not Outcome.APPLIED


@dataclass
class DeviceResult:
    device: str
    outcome: Outcome
    reason: str = ""


@dataclass
class Wave:
    index: int  # 0 is the canary wave
    devices: list[str]
    results: list[DeviceResult] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, outcome: Outcome) -> int:
        return sum(r.outcome is outcome for r in self.results)


@dataclass
class RolloutResult:
    job_id: str
    group: str
    version: int
    max_failed_percent: float
    waves: list[Wave] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # device -> why it was not sent the job
    not_sent: list[str] = field(default_factory=list)  # left when the gate stopped the rollout
    stopped: bool = False

    @property
    def results(self) -> list[DeviceResult]:
        return [r for w in self.waves for r in w.results]

    @property
    def sent(self) -> int:
        return len(self.results)

    @property
    def applied(self) -> list[str]:
        return [r.device for r in self.results if not r.outcome.failed]

    @property
    def failed(self) -> list[DeviceResult]:
        return [r for r in self.results if r.outcome.failed]

    @property
    def failed_percent(self) -> float:
        return 100.0 * len(self.failed) / self.sent if self.sent else 0.0

    @property
    def all_applied(self) -> bool:
        """Every device of the group runs the version now (applied here, or already running it)."""
        return not self.stopped and not self.failed and not self.not_sent and all(
            why.startswith("already") for why in self.skipped.values()
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "group": self.group,
            "version": self.version,
            "stopped": self.stopped,
            "all_applied": self.all_applied,
            "sent": self.sent,
            "applied": len(self.applied),
            "failed": len(self.failed),
            "failed_percent": round(self.failed_percent, 2),
            "max_failed_percent": self.max_failed_percent,
            "waves": [
                {"wave": w.index, "canary": w.index == 0, "seconds": round(w.seconds, 2),
                 "devices": [{**asdict(r), "outcome": r.outcome.value} for r in w.results]}
                for w in self.waves
            ],
            "skipped": self.skipped,
            "not_sent": self.not_sent,
        }


# -- pure decisions --


def plan_waves(devices: list[str], canary: int, step_percent: float) -> list[list[str]]:
    """The canary wave (`canary` devices), then waves of `step_percent` of the whole list (at least one
    device each) until every device is in a wave. The order of `devices` is kept."""
    step = max(1, math.ceil(len(devices) * step_percent / 100))
    waves = [devices[:canary]] if devices else []
    waves += [devices[i : i + step] for i in range(canary, len(devices), step)]
    return waves


def gate_passed(failed: int, sent: int, max_failed_percent: float) -> bool:
    """True when the failures so far are more than `max_failed_percent` of the devices sent the job so far
    (cumulative over waves: a wave of 5 with one failure does not stop a fleet whose 5% fail at random)."""
    return sent > 0 and failed * 100 > max_failed_percent * sent


def outcome_of(job: dict[str, Any] | None, job_id: str) -> tuple[Outcome, str] | None:
    """The device's outcome from its job status, or None while it has none or is still working on it."""
    if job is None or job.get("job_id") != job_id:
        return None
    state = job.get("state")
    if state not in TERMINAL:
        return None
    return Outcome(state), str(job.get("reason") or "")


def select(devices: dict[str, DeviceDocs], group: str, version: int) -> tuple[list[str], dict[str, str]]:
    """The group's devices to send the job to, sorted (the canaries are the first ones), and the ones to
    skip with why: already running this version or a newer one, or offline (the broker's retained
    availability says so; a rollout run again later reaches them, the others answer from their status)."""
    todo, skipped = [], {}
    for name in sorted(devices):
        d = devices[name]
        if group not in d.groups:
            continue
        running = d.running_version
        if running is not None and running >= version:
            skipped[name] = f"already running version {running}"
        elif d.availability is not None and d.availability != ONLINE:
            skipped[name] = f"availability {d.availability}"
        else:
            todo.append(name)
    return todo, skipped


def command(model: Model, job_id: str, group: str, wave: int) -> dict[str, Any]:
    """The install command (protocol keys plus `rollout` for the device's log and Home Assistant)."""
    return {"job_id": job_id, "url": model.url, "sha256": model.sha256, "size": model.size,
            "version": model.version, "rollout": {"group": group, "wave": wave}}  # fmt: skip


def wave_line(result: RolloutResult, wave: Wave, waves: int) -> str:
    name = "canary" if wave.index == 0 else f"wave {wave.index}"
    counts = ", ".join(f"{wave.count(o)} {o.value.replace('_', ' ')}" for o in Outcome if wave.count(o) or
                       o is Outcome.APPLIED)  # fmt: skip
    return (f"{name} ({wave.index + 1}/{waves}): {len(wave.devices)} devices, {counts} in {wave.seconds:.1f} s; "
            f"failed so far {len(result.failed)}/{result.sent} = {result.failed_percent:.1f}% "
            f"(gate {result.max_failed_percent:g}%)")


# -- the rollout on a broker --


def rollout(view: FleetView, model: Model, plan: Plan, say: Callable[[str], None] = print) -> RolloutResult:
    """Send the job wave by wave and wait for each wave's terminal states; stop when the failures so far
    pass the gate. InputError when the group has no device at all."""
    job_id = plan.job_id or model.job_id()
    devices = view.devices()
    todo, skipped = select(devices, plan.group, model.version)
    result = RolloutResult(job_id, plan.group, model.version, plan.max_failed_percent, skipped=skipped)
    if not todo and not skipped:
        groups = sorted({g for d in devices.values() for g in d.groups})
        raise InputError(
            f"no device in group {plan.group!r} on {view.host}:{view.port} under {view.prefix!r} "
            f"({len(devices)} devices seen, groups: {', '.join(groups) or 'none'}); check --group and [fleet] "
            "groups on the devices"
        )
    waves = plan_waves(todo, plan.canary, plan.step_percent)
    say(f"rollout {job_id}: version {model.version} from {model.url} to group {plan.group!r}: {len(todo)} devices "
        f"in {len(waves)} waves, {len(skipped)} skipped")
    for index, names in enumerate(waves):
        wave = Wave(index, names)
        t0 = time.monotonic()
        for name in names:
            view.publish(f"{view.prefix}/{name}/model/install", command(model, job_id, plan.group, index))
        view.wait(_all_done(names, job_id), plan.wave_timeout_s)
        wave.seconds = time.monotonic() - t0
        now = view.devices()
        wave.results = [_result(now.get(n), n, job_id, plan.wave_timeout_s) for n in names]
        result.waves.append(wave)
        say(wave_line(result, wave, len(waves)))
        if gate_passed(len(result.failed), result.sent, plan.max_failed_percent):
            result.stopped = True
            result.not_sent = [n for w in waves[index + 1 :] for n in w]
            break
    return result


def _all_done(names: list[str], job_id: str) -> Callable[[dict[str, DeviceDocs]], bool]:
    def done(docs: dict[str, DeviceDocs]) -> bool:
        return all(outcome_of(d.job if (d := docs.get(n)) else None, job_id) for n in names)

    return done


def _result(docs: DeviceDocs | None, name: str, job_id: str, timeout: float) -> DeviceResult:
    job = docs.job if docs is not None else None
    got = outcome_of(job, job_id)
    if got is not None:
        return DeviceResult(name, *got)
    if job is not None and job.get("job_id") == job_id:
        return DeviceResult(name, Outcome.STUCK, f"still {job.get('state')} after {timeout:g} s")
    return DeviceResult(name, Outcome.NO_ANSWER, f"no status for the job within {timeout:g} s")


def summary(result: RolloutResult, show: int = 20) -> list[str]:
    """The closing lines: the verdict, then the failed and skipped devices (the first `show` of each)."""
    n_failed = len(result.failed)
    if result.stopped:
        head = (f"stopped: {n_failed} of {result.sent} devices failed ({result.failed_percent:.1f}%), more than "
                f"--max-failed-percent {result.max_failed_percent:g}; {len(result.not_sent)} devices were not "
                "sent the job")
    else:
        head = (f"done: {len(result.applied)} of {result.sent} devices applied version {result.version}, "
                f"{n_failed} failed ({result.failed_percent:.1f}%, gate {result.max_failed_percent:g}%), "
                f"{len(result.skipped)} skipped")
    lines = [head]
    for r in result.failed[:show]:
        lines.append(f"  {r.device}: {r.outcome.value}{': ' + r.reason if r.reason else ''}")
    if n_failed > show:
        lines.append(f"  ... and {n_failed - show} more failed (--json lists every device)")
    for name, why in list(result.skipped.items())[:show]:
        lines.append(f"  {name}: skipped: {why}")
    if len(result.skipped) > show:
        lines.append(f"  ... and {len(result.skipped) - show} more skipped")
    return lines
