"""The systemd units: they verify, they are hardened (exposure <= 2.0), and the daemon's stack
tolerates the sandbox they ask for (MemoryDenyWriteExecute, checked with the kernel's own MDWE)."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_resnet.errors import ExitCode

REPO = Path(__file__).resolve().parents[1]
UNITS = REPO / "systemd"
MAIN = UNITS / "edge-resnet.service"
TEMPLATE = UNITS / "edge-resnet@.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def directives(path: Path) -> dict[str, list[str]]:
    """KEY -> every value it is given (systemd allows repeats), across all sections."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;[":
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def _staged(tmp_path: Path, unit: Path, instance: str | None = None) -> Path:
    """A copy whose ExecStart points at this checkout's real `edge-resnet` (verify checks that
    the binary exists); a template is verified as an instance, as systemd would load it."""
    exe = Path(sys.executable).parent / "edge-resnet"
    assert exe.exists(), f"{exe} missing: install the package (pip install -e .)"
    text = unit.read_text().replace("/opt/edge-resnet/venv/bin/edge-resnet", str(exe))
    name = unit.name.replace("@.", f"@{instance}.") if instance else unit.name
    out = tmp_path / name
    out.write_text(text)
    return out


@pytest.mark.parametrize(("unit", "instance"), [(MAIN, None), (TEMPLATE, "garage")])
@needs_analyze
def test_systemd_analyze_verify_passes(tmp_path: Path, unit: Path, instance: str | None) -> None:
    staged = _staged(tmp_path, unit, instance)
    r = subprocess.run([str(ANALYZE), "verify", "--man=no", str(staged)], capture_output=True, text=True, timeout=60)
    # verify returns 0 with warnings (unknown keys, bad values): any output is a failure too.
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr


@needs_analyze
def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    """The check above is not vacuous: a typo in a key is reported."""
    staged = _staged(tmp_path, MAIN)
    staged.write_text(staged.read_text().replace("ProtectHome=yes", "ProtectHomes=yes"))
    r = subprocess.run([str(ANALYZE), "verify", "--man=no", str(staged)], capture_output=True, text=True, timeout=60)
    assert "ProtectHomes" in r.stderr


def _exposure(unit: Path) -> float:
    r = subprocess.run(
        [str(ANALYZE), "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    assert m, r.stdout + r.stderr
    return float(m.group(1))


@pytest.mark.parametrize(("unit", "instance"), [(MAIN, None), (TEMPLATE, "garage")])
@needs_analyze
def test_security_exposure_at_most_2(tmp_path: Path, unit: Path, instance: str | None) -> None:
    score = _exposure(_staged(tmp_path, unit, instance))
    print(f"\nsystemd-analyze security --offline=yes {unit.name}: overall exposure {score}")
    assert score <= 2.0


@pytest.mark.parametrize("unit", [MAIN, TEMPLATE])
def test_units_say_what_the_issue_asks(unit: Path) -> None:
    d = directives(unit)
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert d["Restart"] == ["on-failure"]
    assert "StartLimitIntervalSec" in d and "StartLimitBurst" in d
    # a bad config must not restart in a loop: ExitCode.CONFIG is listed
    prevented = {int(x) for v in d["RestartPreventExitStatus"] for x in v.split()}
    assert int(ExitCode.CONFIG) in prevented and int(ExitCode.USAGE) in prevented
    # the watchdog exists and leaves the daemon room (pings every WatchdogSec/2)
    assert re.fullmatch(r"\d+s", d["WatchdogSec"][0]) and int(d["WatchdogSec"][0][:-1]) >= 10
    assert d["User"] == ["edge-resnet"]
    groups = " ".join(d["SupplementaryGroups"]).split()
    assert {"video", "plugdev", "apex"} <= set(groups)
    allowed = {v.split()[0] for v in d["DeviceAllow"]}
    assert {"char-video4linux", "char-apex", "char-usb_device"} <= allowed
    assert d["DevicePolicy"] == ["closed"]
    assert d["ProtectSystem"] == ["strict"]
    assert d["ConfigurationDirectory"] == ["edge-resnet"]
    assert d["StateDirectory"][0].split()[0].startswith("edge-resnet")
    assert d["CapabilityBoundingSet"] == [""] and d["AmbientCapabilities"] == [""]
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome", "MemoryDenyWriteExecute", "LockPersonality"):
        assert d[key] == ["yes"], key
    assert "ExecStart" in d and " run " in d["ExecStart"][0]


def test_template_has_one_config_and_state_dir_per_instance() -> None:
    d = directives(TEMPLATE)
    assert "--config /etc/edge-resnet/%i.toml" in d["ExecStart"][0]
    # the daemon's default state_dir is the first $STATE_DIRECTORY entry: the instance's own
    assert d["StateDirectory"][0].split()[0] == "edge-resnet/%i"
    assert d["SyslogIdentifier"] == ["edge-resnet@%i"]


# -- the sandbox, tried on the real stack -----------------------------------------------------

_PR_SET_MDWE = 65
_PR_MDWE_REFUSE_EXEC_GAIN = 1
_PROBE = r"""
import ctypes, mmap, sys
import numpy as np
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("MDWE not in force: a W+X mapping was allowed")
except OSError:
    pass
import cv2
from edge_resnet.engine import Engine
engine = Engine.load(sys.argv[1], "cpu")
scores = engine.invoke(np.zeros(engine.input.shape, engine.input.dtype))
ok, jpg = cv2.imencode(".jpg", np.zeros((48, 64, 3), np.uint8))
cb = ctypes.CFUNCTYPE(None, ctypes.c_char_p)(lambda s: None)  # load_delegate's error callback
cb(b"x")
import paho.mqtt.client, sqlite3, ssl
sqlite3.connect(":memory:").execute("select 1")
print("ok", engine.delegate, int(scores.argmax()), ok)
"""


def _mdwe_preexec() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_MDWE, _PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        os._exit(97)


def test_daemon_stack_runs_under_memory_deny_write_execute(mobilenet_quant: Path) -> None:
    """MemoryDenyWriteExecute=yes is only safe if nothing JITs: run numpy, OpenCV, the
    interpreter with XNNPACK, a ctypes callback, paho and sqlite with the kernel's MDWE on
    (prctl PR_SET_MDWE, Linux >= 6.3, kept across exec), as systemd's seccomp filter would."""
    r = subprocess.run(
        [sys.executable, "-c", _PROBE, str(mobilenet_quant)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_mdwe_preexec,
    )
    if r.returncode == 97:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("ok "), r.stdout


# -- the unit's system-call filter and address families, applied with libseccomp -----------------

_SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_CMP_EQ = 4
_SOCKET_FAMILIES = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16}


class _ScmpArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def _expand(group: str, seen: set[str] | None = None) -> set[str]:
    """A systemd syscall group (e.g. @system-service) as system call names, nested groups expanded."""
    seen = seen if seen is not None else set()
    if group in seen:
        return set()
    seen.add(group)
    out = subprocess.run(
        [str(ANALYZE), "syscall-filter", "--no-pager", group], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    names: set[str] = set()
    for line in out.splitlines()[1:]:
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        names |= _expand(item, seen) if item.startswith("@") else {item}
    return names


def _unit_syscalls(unit: Path) -> tuple[set[str], int, list[int]]:
    """(allowed syscalls, errno for the rest, allowed socket families) as systemd computes them from
    the unit: an allow-list starts from @default, and `~...` entries remove from it."""
    d = directives(unit)
    allowed = _expand("@default")
    for value in d["SystemCallFilter"]:
        deny = value.startswith("~")
        names: set[str] = set()
        for item in value.lstrip("~").split():
            names |= _expand(item) if item.startswith("@") else {item}
        allowed = allowed - names if deny else allowed | names
    err = getattr(errno, d["SystemCallErrorNumber"][0])
    families = [_SOCKET_FAMILIES[f] for f in d["RestrictAddressFamilies"][0].split()]
    return allowed, err, families


def _seccomp_preexec(allowed: set[str], err: int, families: list[int]) -> Callable[[], None]:
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ScmpArgCmp),
    ]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    numbers = [n for n in (lib.seccomp_syscall_resolve_name(s.encode()) for s in sorted(allowed)) if n >= 0]
    socket_nr = lib.seccomp_syscall_resolve_name(b"socket")

    def apply() -> None:  # in the child, between fork and exec, as systemd does
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_MDWE, _PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0)
        ctx = lib.seccomp_init(0x00050000 | err)  # SCMP_ACT_ERRNO(err)
        if not ctx:
            os._exit(98)
        for nr in numbers:
            if nr != socket_nr and lib.seccomp_rule_add_array(ctx, _SCMP_ACT_ALLOW, nr, 0, None) != 0:
                os._exit(98)
        for fam in families:  # RestrictAddressFamilies=
            cmp = _ScmpArgCmp(0, _SCMP_CMP_EQ, fam, 0)
            if lib.seccomp_rule_add_array(ctx, _SCMP_ACT_ALLOW, socket_nr, 1, ctypes.byref(cmp)) != 0:
                os._exit(98)
        if lib.seccomp_load(ctx) != 0:
            os._exit(98)

    return apply


_SANDBOX_PROBE = r"""
import socket, sys
for fam in (socket.AF_PACKET, 31):  # 31: AF_BLUETOOTH
    try:
        socket.socket(fam, socket.SOCK_RAW)
        sys.exit(f"family {fam} was allowed")
    except OSError:
        pass
try:
    import os; os.setuid(0)
    sys.exit("setuid was allowed")
except PermissionError:
    pass
print("sandbox in force")
"""


@needs_analyze
def test_daemon_runs_inside_the_units_syscall_filter(
    tmp_path: Path, mobilenet_quant: Path, labels_1001: Path, samples_dir: Path
) -> None:
    """`edge-resnet run` with MQTT (real mosquitto, SQLite queue) and the HTTP overlay, under the
    unit's own SystemCallFilter/SystemCallErrorNumber/RestrictAddressFamilies (read from the unit,
    loaded with libseccomp) and MemoryDenyWriteExecute: it classifies, publishes, serves and exits 0."""
    if not Path("/usr/lib/x86_64-linux-gnu/libseccomp.so.2").exists() and ctypes.util.find_library("seccomp") is None:
        pytest.skip("libseccomp is not installed")
    from .helpers.broker import Broker, free_port
    from .helpers.video import pick_samples, write_folder

    allowed, err, families = _unit_syscalls(MAIN)
    preexec = _seccomp_preexec(allowed, err, families)
    probe = subprocess.run(
        [sys.executable, "-c", _SANDBOX_PROBE], capture_output=True, text=True, timeout=60, preexec_fn=preexec
    )
    if probe.returncode == 98:
        pytest.skip("cannot load a seccomp filter here")
    assert probe.returncode == 0 and "sandbox in force" in probe.stdout, probe.stdout + probe.stderr

    broker = Broker(tmp_path / "mq").start()
    try:
        folder = write_folder(tmp_path / "frames", pick_samples(samples_dir, 3), size=(320, 240))
        state = tmp_path / "state"
        state.mkdir()
        http_port = free_port()
        cfg = tmp_path / "config.toml"
        cfg.write_text(
            f'device_id = "sandbox-test"\nstate_dir = "{state}"\n'
            f'[model]\npath = "{mobilenet_quant}"\nlabels = "{labels_1001}"\n'
            f'[source]\ntype = "folder"\npath = "{folder}"\ninterval_s = 0.1\nloop = true\n'
            f'[mqtt]\nurl = "{broker.url}"\n'
            f'[http]\nlisten = "127.0.0.1:{http_port}"\n'
        )
        r = subprocess.run(
            [sys.executable, "-m", "edge_resnet", "run", "--config", str(cfg), "--max-frames", "15"],
            capture_output=True,
            text=True,
            timeout=120,
            preexec_fn=preexec,
            cwd=REPO,
        )
    finally:
        broker.stop()
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Operation not permitted" not in r.stderr and "PermissionError" not in r.stderr, r.stderr[-3000:]
    assert "stopped" in r.stderr
    assert "mqtt" in r.stderr.lower() and str(http_port) in r.stderr, r.stderr[-3000:]
    print("\n" + "\n".join(x for x in r.stderr.splitlines() if "mqtt" in x.lower() or "http" in x.lower()))
    print(f"sandboxed run: {len(allowed)} system calls allowed, families {families}, exit 0")


@pytest.mark.parametrize("unit", [MAIN, TEMPLATE])
def test_resource_limits_leave_room_for_the_daemons_caps(unit: Path) -> None:
    """Issue 13: the unit bounds memory, tasks and fds; the daemon's own caps stay well below them,
    so a hostile client meets the daemon's 503/431 long before the kernel's OOM kill or EMFILE."""
    from edge_resnet.sinks.front import Limits

    d = directives(unit)
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    mem_max = int(d["MemoryMax"][0][:-1]) * units[d["MemoryMax"][0][-1]]
    mem_high = int(d["MemoryHigh"][0][:-1]) * units[d["MemoryHigh"][0][-1]]
    tasks, nofile = int(d["TasksMax"][0]), int(d["LimitNOFILE"][0])
    assert mem_high < mem_max <= 512 * 2**20, "a 1 GB Pi keeps half for the OS"
    lim = Limits()
    assert lim.max_connections * 8 <= nofile, "HTTP connections use a small share of the fds"
    assert lim.workers + lim.stream_workers + 24 <= tasks, "HTTP workers + pipeline, capture, MQTT, XNNPACK"
    assert lim.max_connections * lim.max_head_bytes <= mem_max // 256, "request heads cost under 0.4% of MemoryMax"
