"""`fleet status`: the devices' retained documents as one row each (device, model, version, job, state,
healthy, last seen), for a table or JSON. Pure functions of DeviceDocs, so tests need no broker."""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Any

from .view import DeviceDocs

COLUMNS = ("device", "model", "version", "job", "state", "healthy", "last seen")


@dataclass(frozen=True)
class Row:
    device: str
    model: str | None  # the running model's name (state document, else presence)
    version: int | None  # the running model's version
    job: str | None  # the last job's id
    state: str | None  # the last job's state
    reason: str  # the last job's reason ("" when fine)
    healthy: bool | None  # the pipeline's health; False when the device is offline; None: unknown
    health: str  # why: "ok", "offline", the state document's reason ...
    online: bool | None  # the retained availability; None when the device publishes none
    last_seen: float | None  # unix time of the newest document
    groups: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)} | {"groups": list(self.groups)}


def row(d: DeviceDocs) -> Row:
    state, job, presence = d.state or {}, d.job or {}, d.presence or {}
    online = None if d.availability is None else d.availability == "online"
    healthy = state.get("healthy") if isinstance(state.get("healthy"), bool) else None
    if online is False:
        healthy, health = False, "offline"
    elif healthy is None:
        health = "no state document"
    else:
        health = "ok" if healthy else str(state.get("reason") or "unhealthy")
    model = state.get("model") or presence.get("model")
    return Row(
        device=d.device,
        model=str(model) if model else None,
        version=d.running_version,
        job=str(job["job_id"]) if job.get("job_id") else None,
        state=str(job["state"]) if job.get("state") else None,
        reason=str(job.get("reason") or ""),
        healthy=healthy,
        health=health,
        online=online,
        last_seen=d.last_seen,
        groups=d.groups,
    )


def rows(devices: dict[str, DeviceDocs], group: str | None = None) -> list[Row]:
    """One row per device (of `group` when given), sorted by device."""
    return [row(devices[n]) for n in sorted(devices) if group is None or group in devices[n].groups]


def ago(ts: float | None, now: float) -> str:
    """'3s ago', '5m ago', '2h ago', '4d ago' ('-' when never seen)."""
    if ts is None:
        return "-"
    s = max(0.0, now - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{int(s // size)}{unit} ago"
    return f"{int(s)}s ago"


def cells(r: Row, now: float) -> tuple[str, ...]:
    healthy = "-" if r.healthy is None else "yes" if r.healthy else f"no ({r.health})"
    state = r.state or "-"
    if r.reason and r.state in ("rolled_back", "rejected"):
        state = f"{state} ({r.reason})"
    return (r.device, r.model or "-", "-" if r.version is None else str(r.version), r.job or "-", state, healthy,
            ago(r.last_seen, now))  # fmt: skip


def table(rs: list[Row], now: float | None = None, width: int = 60) -> str:
    """A plain text table with a header; each cell cut at `width` characters."""
    now = time.time() if now is None else now
    body = [tuple(c if len(c) <= width else c[: width - 3] + "..." for c in cells(r, now)) for r in rs]
    widths = [max([len(h)] + [len(b[i]) for b in body]) for i, h in enumerate(COLUMNS)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(COLUMNS, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)).rstrip() for b in body]
    return "\n".join(lines)


def counts(rs: list[Row]) -> str:
    """The closing line: how many devices, online, healthy, and per job state."""
    states: dict[str, int] = {}
    for r in rs:
        states[r.state or "no job"] = states.get(r.state or "no job", 0) + 1
    per_state = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    return (f"{len(rs)} devices: {sum(r.online is not False for r in rs)} online, "
            f"{sum(r.healthy is True for r in rs)} healthy; jobs: {per_state or 'none'}")
