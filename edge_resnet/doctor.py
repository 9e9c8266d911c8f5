"""`edge-resnet doctor`: is this device ready to run the daemon? Each check is a small function that
returns rows (check, result, detail, fix); nothing here changes the machine.

Paths (`/dev`, `/sys`) are parameters so tests can point the checks at a fake tree.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import glob
import os
import shutil
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from .devices import edgetpu_library
from .errors import EdgeResnetError
from .sinkconfig import MqttConfig

T = TypeVar("T")

CORAL_USB_IDS = {
    ("1a6e", "089a"): "Coral USB Accelerator (before firmware load)",
    ("18d1", "9302"): "Coral USB Accelerator",
}
UDEV_FIX = "install deploy/99-edge-resnet-coral.rules (deploy/install.sh does) and replug the accelerator"


class Result(StrEnum):
    OK = "ok"
    WARN = "warn"  # worth knowing, does not stop the daemon
    FAIL = "FAIL"  # the daemon will not work as configured
    SKIP = "skip"  # not applicable here


@dataclass(frozen=True)
class Check:
    name: str
    result: Result
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        d = asdict(self)
        d["result"] = self.result.value
        return d


# -- helpers --------------------------------------------------------------------------------------


def with_timeout(fn: Callable[[], T], timeout: float) -> T:
    """Run fn in a daemon thread; TimeoutError if it does not return in time (a hung driver)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # re-raised in the caller
            box["error"] = e

    t = threading.Thread(target=target, daemon=True, name="doctor-probe")
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"no answer within {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


# -- cameras --------------------------------------------------------------------------------------

_VIDIOC_QUERYCAP = 0x80685600  # _IOR('V', 0, struct v4l2_capability), 104 bytes
_CAP_VIDEO_CAPTURE = 0x00000001
_CAP_VIDEO_CAPTURE_MPLANE = 0x00001000
_CAP_DEVICE_CAPS = 0x80000000


def v4l2_capture_info(path: str) -> tuple[bool, str]:
    """(is a capture node, card name) via VIDIOC_QUERYCAP. UVC cameras also expose metadata nodes,
    and a Raspberry Pi has a dozen codec/ISP nodes: only capture nodes are cameras."""
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    try:
        buf = fcntl.ioctl(fd, _VIDIOC_QUERYCAP, bytes(104))
    finally:
        os.close(fd)
    card = buf[16:48].split(b"\0", 1)[0].decode(errors="replace")
    caps, device_caps = struct.unpack_from("<II", buf, 84)
    effective = device_caps if caps & _CAP_DEVICE_CAPS else caps
    return bool(effective & (_CAP_VIDEO_CAPTURE | _CAP_VIDEO_CAPTURE_MPLANE)), card


def _grab_frame(path: str) -> tuple[int, int]:
    import cv2

    cap = cv2.VideoCapture(path, cv2.CAP_V4L2)
    try:
        if not cap.isOpened():
            raise OSError("OpenCV cannot open it")
        ok, frame = cap.read()
        if not ok or frame is None:
            raise OSError("opens but delivers no frame (in use by another process, e.g. edge-resnet.service?)")
        return int(frame.shape[1]), int(frame.shape[0])
    finally:
        cap.release()


def check_cameras(dev: str = "/dev", timeout: float = 5.0, required: bool = True) -> list[Check]:
    """Every /dev/videoN that is a capture device, opened with OpenCV and read once."""
    nodes = sorted(glob.glob(os.path.join(dev, "video*")), key=lambda p: (len(p), p))
    result_if_missing = Result.FAIL if required else Result.WARN
    if not nodes:
        return [
            Check(
                "camera",
                result_if_missing,
                f"no camera: no {dev}/video* device",
                'plug in a USB (UVC) camera, or for a Raspberry Pi camera use `type = "picamera2"` in [source]; '
                "`v4l2-ctl --list-devices` shows what the kernel sees",
            )
        ]
    rows: list[Check] = []
    working = 0
    for node in nodes:
        try:
            capture, card = v4l2_capture_info(node)
        except PermissionError:
            rows.append(
                Check(
                    f"camera {node}",
                    Result.FAIL,
                    "permission denied",
                    "add the user to the `video` group (the service has it via SupplementaryGroups=video)",
                )
            )
            continue
        except OSError as e:
            rows.append(Check(f"camera {node}", Result.SKIP, f"not queryable ({e.strerror or e})"))
            continue
        if not capture:
            continue  # metadata, codec, ISP nodes: not cameras, not worth a row
        try:
            w, h = with_timeout(lambda node=node: _grab_frame(node), timeout)  # type: ignore[misc]
        except (OSError, TimeoutError) as e:
            rows.append(
                Check(
                    f"camera {node}",
                    Result.WARN,
                    f"{card}: {e}",
                    "stop whatever holds it (`fuser -v " + node + "`), or use a Pi camera via picamera2",
                )
            )
            continue
        working += 1
        rows.append(Check(f"camera {node}", Result.OK, f"{card}: {w}x{h} frame read"))
    if working == 0:
        rows.insert(
            0,
            Check(
                "camera",
                result_if_missing,
                f"no camera delivers frames ({len(nodes)} {dev}/video* nodes, none a working capture device)",
                "check the cable and `v4l2-ctl --list-devices`; a Raspberry Pi camera needs the picamera2 source",
            ),
        )
    return rows


def check_picamera2(timeout: float = 10.0) -> list[Check]:
    """Raspberry Pi cameras through libcamera, when picamera2 is installed (apt: python3-picamera2)."""
    return picamera2_cameras(timeout)[0]


def picamera2_cameras(timeout: float = 10.0) -> tuple[list[Check], list[dict[str, Any]] | None]:
    """The picamera2 row and libcamera's cameras (picamera2's global_camera_info; None when unreadable)."""
    try:
        from picamera2 import Picamera2
    except ImportError:
        return [
            Check(
                "picamera2",
                Result.FAIL,
                "the source is picamera2 but the package is not importable",
                "sudo apt install python3-picamera2, and create the venv with --system-site-packages "
                "(deploy/install.sh does)",
            )
        ], None
    try:
        cams = with_timeout(lambda: [dict(c) for c in Picamera2.global_camera_info()], timeout)
    except Exception as e:
        fix = "check the camera ribbon cable and dmesg"
        return [Check("picamera2", Result.FAIL, f"libcamera failed: {e}", fix)], None
    if not cams:
        return [
            Check(
                "picamera2",
                Result.FAIL,
                "no Raspberry Pi camera found by libcamera",
                "check the ribbon cable, then `rpicam-hello --list-cameras`",
            )
        ], cams
    names = ", ".join(str(c.get("Model", "?")) for c in cams)
    return [Check("picamera2", Result.OK, f"{len(cams)} camera(s): {names}")], cams


def check_configured_camera(device: int | str, dev: str = "/dev", timeout: float = 5.0) -> list[Check]:
    """The camera the config names ([source] device: an index, /dev/videoN or a /dev/v4l/by-id path)."""
    path = os.path.join(dev, f"video{device}") if isinstance(device, int) else device
    name = "source"
    if not os.path.exists(path):
        hint = "ls -l /dev/v4l/by-id/" if "by-id" in path else "v4l2-ctl --list-devices"
        return [
            Check(name, Result.FAIL, f"{path} does not exist", f"plug the camera in, or fix [source] device (`{hint}`)")
        ]
    real = os.path.realpath(path)
    try:
        w, h = with_timeout(lambda: _grab_frame(real), timeout)
    except (OSError, TimeoutError) as e:
        return [Check(name, Result.FAIL, f"{real}: {e}", "check the camera with `v4l2-ctl -d " + real + " --all`")]
    return [Check(name, Result.OK, f"{real}: {w}x{h} frame read")]


# -- per-source probes: `config.SOURCES` names each source's (a kind without one uses probe_path_source) --


def probe_opencv_source(source: Any, timeout: float) -> list[Check]:
    """V4L2 cameras (also the default when there is no config), then the configured one."""
    checks = check_cameras(timeout=timeout, required=True)
    if source is not None:
        checks += check_configured_camera(source.device, timeout=timeout)
    return checks


def probe_without_source(timeout: float) -> list[Check]:
    """No config and no --source: whether the daemon will read a camera, a video file or a folder is
    unknown, so the cameras found are listed for information and a missing one fails nothing."""
    rows = [
        c if c.result is Result.OK else Check(c.name, Result.SKIP, c.detail)
        for c in check_cameras(timeout=timeout, required=False)
    ]
    return [
        *rows,
        Check(
            "source",
            Result.SKIP,
            "none given (no --config, no --source): no camera required; check yours with "
            "`edge-resnet doctor --source 0` (or /dev/videoN, a video file, a folder)",
        ),
    ]


def probe_path_source(source: Any, timeout: float) -> list[Check]:
    """file / folder sources need their path; url and gstreamer are checked when the daemon opens them."""
    path = getattr(source, "path", None)
    if path is None:
        return [Check("source", Result.SKIP, f"{source.type} source: opened by the daemon, not probed here")]
    if os.path.exists(path):
        return [Check("source", Result.OK, f"{source.type} source {path} exists")]
    return [Check("source", Result.FAIL, f"{source.type} source {path} does not exist", "fix [source] path")]


def check_user(service_user: str = "edge-resnet") -> list[Check]:
    """Permission checks mean little as root: say who is asking."""
    import pwd

    try:
        me = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        me = str(os.geteuid())
    if os.geteuid() == 0:
        return [
            Check(
                "user",
                Result.WARN,
                "running as root: every permission check passes",
                f"run as the service user to see what it sees: sudo -u {service_user} edge-resnet doctor ...",
            )
        ]
    return [Check("user", Result.OK, f"running as {me}")]


# -- model, interpreter ---------------------------------------------------------------------------


def check_interpreter() -> list[Check]:
    from .engine import find_runtime

    try:
        rt = find_runtime()
    except EdgeResnetError as e:
        return [Check("interpreter", Result.FAIL, str(e), "pip install ai-edge-litert (tflite-runtime on armv7l)")]
    rows = [Check("interpreter", Result.OK, f"{rt.name} {rt.version}")]
    versions = []
    for mod, dist in (("numpy", "numpy"), ("cv2", "opencv-python-headless"), ("paho.mqtt", "paho-mqtt")):
        try:
            m = __import__(mod, fromlist=["__version__"])
            versions.append(f"{dist.split('-')[0]} {getattr(m, '__version__', '?')}")
        except ImportError:
            versions.append(f"{dist} missing")
    rows.append(Check("packages", Result.OK, ", ".join(versions)))
    return rows


def check_model(model: str | None, device: str, models_dir: str) -> list[Check]:
    """Load, verify and warm up the model exactly as the daemon will; say which delegate runs it."""
    from .engine import Engine, edgetpu_twin
    from .imx500 import is_sensor_model

    if not model:
        found = sorted(glob.glob(os.path.join(models_dir, "*.tflite")))
        if not found:
            return [
                Check(
                    "model",
                    Result.FAIL,
                    f"no model given and none in {models_dir}",
                    f"copy a .tflite into {models_dir} and set [model] path, or pass --model",
                )
            ]
        model = next((m for m in found if not m.endswith("_edgetpu.tflite")), found[0])
    if is_sensor_model(model):
        return check_sensor_model(model)
    t0 = time.perf_counter()
    try:
        engine = Engine.load(model, device=device)  # type: ignore[arg-type]
    except EdgeResnetError as e:
        return [Check("model", Result.FAIL, str(e), "see the message; `edge-resnet info MODEL` describes a model")]
    ms = (time.perf_counter() - t0) * 1000.0
    rows = [Check("model", Result.OK, f"{engine.describe()}; loaded and warmed up in {ms:.0f} ms")]
    if device == "auto" and engine.device == "cpu" and edgetpu_twin(Path(model)) is not None:
        rows.append(
            Check(
                "model delegate",
                Result.WARN,
                "an Edge TPU build exists but the CPU model runs",
                "attach the Edge TPU and install libedgetpu1-std",
            )
        )
    return rows


def check_sensor_model(model: str) -> list[Check]:
    """An IMX500 network's metadata (`<name>_imx500.json`): loaded as the daemon loads it; the network
    itself runs on the sensor, so nothing is warmed up here."""
    from .imx500 import load_sensor_classifier

    try:
        clf = load_sensor_classifier(model)
    except EdgeResnetError as e:
        return [Check("model", Result.FAIL, str(e), "see the message; `edge-resnet convert --target imx500` writes it")]
    n = clf.engine.output.shape[1]
    labels = len(clf.labels) if clf.labels else 0
    return [Check("model", Result.OK, f"{clf.engine.describe()}: {n} outputs, {labels} labels")]


# -- Edge TPU -------------------------------------------------------------------------------------


def find_coral_usb(sys_root: str = "/sys") -> list[tuple[str, str, str]]:
    """(sysfs device dir, vendor:product, description) for each Coral USB accelerator attached."""
    out = []
    for d in sorted(glob.glob(os.path.join(sys_root, "bus/usb/devices/*"))):
        try:
            vid = Path(d, "idVendor").read_text().strip().lower()
            pid = Path(d, "idProduct").read_text().strip().lower()
        except OSError:
            continue
        if (vid, pid) in CORAL_USB_IDS:
            out.append((d, f"{vid}:{pid}", CORAL_USB_IDS[(vid, pid)]))
    return out


def _usb_node(sysdir: str, dev: str) -> str | None:
    try:
        bus = int(Path(sysdir, "busnum").read_text())
        num = int(Path(sysdir, "devnum").read_text())
    except (OSError, ValueError):
        return None
    return os.path.join(dev, f"bus/usb/{bus:03d}/{num:03d}")


def libedgetpu_loadable() -> tuple[bool, str]:
    try:
        ctypes.CDLL(edgetpu_library())
    except OSError as e:
        return False, str(e)
    return True, edgetpu_library()


def check_edgetpu(
    required: bool,
    dev: str = "/dev",
    sys_root: str = "/sys",
    lib_probe: Callable[[], tuple[bool, str]] = libedgetpu_loadable,
) -> list[Check]:
    """PCIe/M.2 (/dev/apex_N), USB (by vendor:product id) and the runtime library."""
    missing = Result.FAIL if required else Result.WARN
    rows: list[Check] = []
    apex = sorted(glob.glob(os.path.join(dev, "apex_*")))
    for node in apex:
        if os.access(node, os.R_OK | os.W_OK):
            rows.append(Check(f"edgetpu {node}", Result.OK, "PCIe/M.2 Edge TPU, accessible"))
        else:
            rows.append(
                Check(
                    f"edgetpu {node}",
                    Result.FAIL,
                    "present but not accessible to this user",
                    "add the user to the `apex` group; Coral's 65-apex.rules (or ours) sets GROUP=apex",
                )
            )
    usb = find_coral_usb(sys_root)
    for sysdir, ids, desc in usb:
        usb_node = _usb_node(sysdir, dev)
        if usb_node and os.path.exists(usb_node) and not os.access(usb_node, os.R_OK | os.W_OK):
            rows.append(Check(f"edgetpu usb {ids}", Result.FAIL, f"{desc} at {usb_node}, not accessible", UDEV_FIX))
        else:
            rows.append(Check(f"edgetpu usb {ids}", Result.OK, f"{desc} ({os.path.basename(sysdir)})"))
    if not apex and not usb:
        rows.append(
            Check(
                "edgetpu",
                missing,
                f"no Edge TPU: no {dev}/apex_* and no USB device 1a6e:089a or 18d1:9302"
                + ("" if required else " (the CPU runs the model)"),
                "attach a Coral USB Accelerator (USB 3 port) or install the gasket-dkms driver for M.2/PCIe"
                if required
                else "",
            )
        )
    ok, info = lib_probe()
    if ok:
        rows.append(Check("libedgetpu", Result.OK, f"{info} loads"))
    else:
        rows.append(
            Check(
                "libedgetpu",
                Result.FAIL if (required or apex or usb) else Result.WARN,
                f"{edgetpu_library()} is not loadable ({info})",
                "install libedgetpu1-std from Coral's apt repository (coral-edgetpu-stable)",
            )
        )
    return rows


# -- broker ---------------------------------------------------------------------------------------


def check_broker(
    url: str | list[str] | None, timeout: float = 3.0, ca_file: str | None = None, mqtt: MqttConfig | None = None
) -> list[Check]:
    """Every broker of `url` (one or a list), one row each, probed as the daemon connects: DNS, TCP,
    for mqtts:// the TLS handshake with the configured CA and client certificate, then an MQTT CONNECT
    with the configured user name and password (the broker's answer says whether it takes them). The
    words are the MQTT sink's own (`reach`, `probe`), so doctor and the running daemon say the same
    thing. `mqtt`: the config's [mqtt] table (MqttConfig), for the certificate, user and password; `url`
    (e.g. from --mqtt) replaces its list. A broker that is merely down is a warning while another of the
    list works (the daemon fails over to it); a mistake (DNS, certificates, credentials) always fails."""
    if not url:
        return [Check("broker", Result.SKIP, "no MQTT broker configured (--mqtt URL or [mqtt] url)")]
    import dataclasses

    from .sinks.mqtt.probe import probe
    from .sinks.mqtt.reach import Unreachable, subject
    from .sinks.mqtt.tls import client_context

    try:
        cfg = dataclasses.replace(mqtt, url=url) if mqtt is not None else MqttConfig(url=url, ca_file=ca_file)
        endpoints = cfg.endpoints()
    except EdgeResnetError as e:
        return [Check("broker", Result.FAIL, str(e), "use mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")]
    problems = cfg.file_problems()
    if problems:
        return [Check("broker", Result.FAIL, *p.split("; ", 1)) for p in problems]
    try:
        ctx = client_context(cfg.ca_file, cfg.cert_file, cfg.key_file) if endpoints[0][2] else None
    except EdgeResnetError as e:
        return [Check("broker", Result.FAIL, *str(e).split("; ", 1))]
    password = os.environ.get(cfg.password_env) if cfg.username is not None else None
    got = [
        probe(
            host,
            port,
            ctx,
            username=cfg.username,
            password=password,
            password_env=cfg.password_env,
            cert_file=cfg.cert_file,
            timeout=timeout,
        )
        for host, port, _ in endpoints
    ]
    any_ok = any(r.cause is None for r in got)
    rows = []
    for i, r in enumerate(got, start=1):
        name = "broker" if len(got) == 1 else f"broker {i}"
        if r.cause is None:
            how = [f"{r.host}:{r.port} reachable in {r.ms:.0f} ms"]
            if ctx is not None:
                how.append(f"TLS certificate verified with {f'CA {cfg.ca_file}' if cfg.ca_file else 'the system CAs'}")
            if cfg.cert_file is not None:
                how.append(f"client certificate {cfg.cert_file} accepted")
            how.append("MQTT CONNECT accepted" + (f" for {cfg.username!r}" if cfg.username is not None else ""))
            rows.append(Check(name, Result.OK, "; ".join(how)))
            continue
        what, _, fix = r.words.partition("; ")
        detail = f"{subject(r.cause, r.host, r.port)}{' ' if r.cause is Unreachable.AUTH else ': '}{what}"
        if r.cause in (Unreachable.REFUSED, Unreachable.TIMEOUT, Unreachable.NETWORK):
            detail = f"cannot connect to {r.host}:{r.port} ({what})"
            fix = fix or "start the broker (e.g. `sudo systemctl start mosquitto`) or fix [mqtt] url"
        down = not r.cause.lasting and any_ok
        if down:
            fix = f"{fix + '; ' if fix else ''}the daemon uses the other brokers meanwhile"
        rows.append(Check(name, Result.WARN if down else Result.FAIL, detail, fix))
    return rows


# -- Raspberry Pi health --------------------------------------------------------------------------

_THROTTLE_BITS = {
    0: "under-voltage",
    1: "ARM frequency capped",
    2: "throttled",
    3: "soft temperature limit",
}


def parse_throttled(text: str) -> tuple[list[str], list[str]]:
    """`throttled=0x50005` -> (conditions now, conditions since boot)."""
    value = int(text.strip().split("=", 1)[-1], 16)
    now = [name for bit, name in _THROTTLE_BITS.items() if value & (1 << bit)]
    past = [name for bit, name in _THROTTLE_BITS.items() if value & (1 << (bit + 16))]
    return now, past


def check_throttling(vcgencmd: str | None = None, timeout: float = 3.0) -> list[Check]:
    exe = vcgencmd or shutil.which("vcgencmd")
    if not exe:
        return [Check("throttling", Result.SKIP, "vcgencmd not found (not a Raspberry Pi)")]
    try:
        out = subprocess.run([exe, "get_throttled"], capture_output=True, text=True, timeout=timeout, check=True)
        now, past = parse_throttled(out.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        return [Check("throttling", Result.SKIP, f"vcgencmd get_throttled unreadable ({e})")]
    power_fix = "use the official power supply (5 V 3 A; 5 V 5 A for a Pi 5) and a short cable"
    cool_fix = "add a heatsink or fan; keep the case ventilated"
    if now:
        fix = power_fix if "under-voltage" in now else cool_fix
        return [Check("throttling", Result.FAIL, "now: " + ", ".join(now), fix)]
    if past:
        fix = power_fix if "under-voltage" in past else cool_fix
        return [Check("throttling", Result.WARN, "since boot: " + ", ".join(past), fix)]
    return [Check("throttling", Result.OK, "no under-voltage or throttling since boot")]


def check_temperature(sys_root: str = "/sys", warn_c: float = 70.0, fail_c: float = 80.0) -> list[Check]:
    readings = []
    for zone in sorted(glob.glob(os.path.join(sys_root, "class/thermal/thermal_zone*"))):
        try:
            milli = int(Path(zone, "temp").read_text().strip())
        except (OSError, ValueError):
            continue
        try:
            kind = Path(zone, "type").read_text().strip()
        except OSError:
            kind = os.path.basename(zone)
        readings.append((milli / 1000.0, kind))
    if not readings:
        return [Check("temperature", Result.SKIP, "no readable thermal zone")]
    temp, kind = max(readings)
    detail = f"{temp:.1f} °C ({kind})"
    if temp >= fail_c:
        return [
            Check(
                "temperature",
                Result.FAIL,
                detail + f": at or above {fail_c:g} °C the SoC throttles",
                "cool it: heatsink, fan, ventilation",
            )
        ]
    if temp >= warn_c:
        return [Check("temperature", Result.WARN, detail + " is high", "add a heatsink or fan before summer")]
    return [Check("temperature", Result.OK, detail)]


# -- state directory ------------------------------------------------------------------------------


def check_disk(path: str, fail_mb: float = 100.0, warn_mb: float = 500.0) -> list[Check]:
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        usage = shutil.disk_usage(p)
    except OSError as e:
        return [Check("disk", Result.SKIP, f"{p}: {e}")]
    free_mb = usage.free / 1e6
    detail = f"{free_mb:,.0f} MB free of {usage.total / 1e6:,.0f} MB on {p}"
    fix = "free space (old logs: `journalctl --vacuum-size=100M`, apt: `apt clean`) or use a bigger card"
    if free_mb < fail_mb:
        return [Check("disk", Result.FAIL, detail, fix)]
    if free_mb < warn_mb:
        return [Check("disk", Result.WARN, detail, fix)]
    return [Check("disk", Result.OK, detail)]


def check_state_dir(path: str, created_by_run: bool = False) -> list[Check]:
    """`created_by_run`: the folder is one `run` makes itself (the user's own, without a config), so
    it need only be creatable; the service's is made by deploy/install.sh with its owner."""
    fix_owner = f"sudo install -d -o edge-resnet -g edge-resnet -m 0750 {path} (deploy/install.sh does)"
    if not os.path.isdir(path) and created_by_run:
        parent = Path(path).parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if os.access(parent, os.W_OK | os.X_OK):
            return [Check("state dir", Result.OK, f"{path} does not exist yet; `edge-resnet run` creates it")]
        return [Check("state dir", Result.FAIL, f"{path} cannot be created ({parent} is not writable)",
                      "pass --state-dir DIR (a folder you can write), or set state_dir in a config")]
    if not os.path.isdir(path):
        return [Check("state dir", Result.FAIL, f"{path} does not exist", fix_owner)]
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".doctor-", delete=True) as f:
            f.write(b"ok")
            f.flush()
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return [Check("state dir", Result.FAIL, f"{path} is not writable by this user ({e.strerror})", fix_owner)]
        return [Check("state dir", Result.FAIL, f"{path}: {e}", "check the file system (dmesg)")]
    return [Check("state dir", Result.OK, f"{path} is writable")]


# -- report ---------------------------------------------------------------------------------------


def failed(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.result is Result.FAIL]


def format_table(checks: list[Check]) -> str:
    width = max([len("CHECK"), *(len(c.name) for c in checks)])
    lines = [f"{'CHECK':<{width}}  RESULT  DETAIL"]
    for c in checks:
        lines.append(f"{c.name:<{width}}  {c.result.value:<6}  {c.detail}")
        if c.fix and c.result in (Result.FAIL, Result.WARN):
            lines.append(f"{'':<{width}}  {'':<6}  fix: {c.fix}")
    problems = len(failed(checks))
    warnings = sum(c.result is Result.WARN for c in checks)
    if problems:
        lines.append(f"\n{problems} problem(s), {warnings} warning(s): fix the FAIL rows above, then run doctor again")
    else:
        lines.append(f"\nno problems ({warnings} warning(s))")
    return "\n".join(lines)
