"""The lab's machines: an arm64 root filesystem run under qemu-user (binfmt) with systemd-nspawn,
and an amd64 container booted with systemd as PID 1.

Both are copies of the cached, pristine root filesystems that `rootfs.sh` builds, made fresh for
each lab run, so every install starts from a clean system and a run can be inspected afterwards.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

NSPAWN = "systemd-nspawn"
# systemd in the container needs the unified cgroup hierarchy and bpf() to enforce DevicePolicy=
# (the default hybrid hierarchy on this host silently does not)
NSPAWN_ENV = {"SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class LabError(RuntimeError):
    """A lab step that could not run: the message names the step and what it printed."""


def fresh_copy(pristine: Path, dest: Path) -> Path:
    """A writable copy of a cached root filesystem (the cache itself is never modified)."""
    if dest.exists():
        subprocess.run(["rm", "-rf", "--one-file-system", str(dest)], check=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", "--reflink=auto", str(pristine), str(dest)], check=True)
    return dest


def _check(proc: subprocess.CompletedProcess[str], what: str, check: bool) -> subprocess.CompletedProcess[str]:
    if check and proc.returncode != 0:
        out = (proc.stdout or "")[-3000:] + (proc.stderr or "")[-3000:]
        raise LabError(f"{what} exited {proc.returncode}:\n{out}")
    return proc


class Rootfs:
    """A non-booted root filesystem: each `run` is one command in a fresh nspawn container
    (its own /proc, /dev and /sys; the host's network, so PyPI and the host's broker are reachable)."""

    def __init__(self, root: Path, binds: dict[Path, str] | None = None) -> None:
        self.root = root
        self.binds = binds or {}

    def path(self, inside: str) -> Path:
        """The host path of a file inside the root filesystem."""
        return self.root / inside.lstrip("/")

    def run(
        self, cmd: str, timeout: float = 600, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        args = [NSPAWN, "-q", "-D", str(self.root), "--register=no", "--keep-unit", "--pipe", "--chdir=/root"]
        for host, inside in self.binds.items():
            args.append(f"--bind-ro={host}:{inside}")
        for k, v in (env or {}).items():
            args.append(f"--setenv={k}={v}")
        args += ["/bin/bash", "-lc", cmd]
        env_ = {**os.environ, **NSPAWN_ENV}
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env_, stdin=subprocess.DEVNULL)
        return _check(proc, f"[{self.root.name}] {cmd}", check)


class Container:
    """An amd64 container booted with systemd as PID 1 (`systemd-nspawn -b`); commands run inside
    with nsenter as root, as an admin at the device's shell would run them."""

    def __init__(self, root: Path, log: Path) -> None:
        self.root = root
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")

    def boot(self, timeout: float = 120) -> float:
        """Boot and wait until systemd says `running` (or `degraded`); returns the seconds it took."""
        assert self.proc is None or self.proc.poll() is not None, "container already running"
        t0 = time.monotonic()
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [NSPAWN, "-D", str(self.root), "-b", "--register=no", "--keep-unit", "--system-call-filter=bpf",
             "--console=passive", "--machine=lab-device"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env={**os.environ, **NSPAWN_ENV},
        )  # fmt: skip
        out.close()
        end = t0 + timeout
        state = ""
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise LabError(f"the container exited with {self.proc.returncode} while booting: {self.tail()}")
            if self.leader() is not None:
                r = self.sh("systemctl is-system-running", check=False, timeout=30)
                state = r.stdout.strip()
                if state in ("running", "degraded"):
                    return time.monotonic() - t0
            time.sleep(0.5)
        raise LabError(f"the container did not finish booting in {timeout} s (state {state!r}): {self.tail()}")

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def leader(self) -> int | None:
        """The host PID of the container's PID 1 (systemd), a child of systemd-nspawn."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        try:
            for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
                kids = (task / "children").read_text().split()
                for k in kids:
                    if Path(f"/proc/{k}/comm").read_text().strip() == "systemd":
                        return int(k)
        except OSError:
            return None
        return None

    def sh(self, cmd: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a shell command inside the container as root (nsenter into all its namespaces)."""
        pid = self.leader()
        if pid is None:
            raise LabError(f"the container is not running (wanted: {cmd})")
        proc = subprocess.run(
            ["nsenter", "-t", str(pid), "-a", "/usr/bin/env", "-i", f"PATH={PATH}", "HOME=/root", "LANG=C.UTF-8",
             "/bin/bash", "-c", f"cd /root && {cmd}"],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        return _check(proc, f"[container] {cmd}", check)

    def wait_exit(self, timeout: float = 60) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def reboot(self, timeout: float = 120) -> float:
        """`systemctl reboot` inside; systemd-nspawn exits (133) and is started again, as a
        supervisor such as systemd-nspawn@.service would. Returns the seconds until `running`."""
        t0 = time.monotonic()
        self.sh("systemctl reboot", check=False, timeout=30)
        code = self.wait_exit(timeout)
        if code not in (0, 133):
            raise LabError(f"systemd-nspawn exited {code} on reboot: {self.tail()}")
        self.boot(timeout)
        return time.monotonic() - t0

    def poweroff(self, timeout: float = 60) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.sh("systemctl poweroff", check=False, timeout=30)
            self.proc.wait(timeout)
        except (subprocess.TimeoutExpired, LabError):
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


def q(s: str | Path) -> str:
    return shlex.quote(str(s))
