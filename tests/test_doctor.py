"""`edge-resnet doctor`: end to end through the CLI on this machine (no camera, no Edge TPU), plus
the hardware checks on fake /sys and /dev trees, since the real ones cannot exist here."""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_resnet import doctor as d
from edge_resnet.errors import ExitCode

from .conftest import run_cli

HAS_CAMERA = any(Path("/dev").glob("video*"))
HAS_TPU = any(Path("/dev").glob("apex_*")) or bool(d.find_coral_usb())


@pytest.fixture
def broker_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A real mosquitto (doctor sends an MQTT CONNECT), its files outside the test's tmp_path."""
    from .helpers.broker import Broker

    b = Broker(tmp_path_factory.mktemp("broker")).start()
    try:
        yield b.port
    finally:
        b.stop()


@pytest.fixture
def closed_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def _rows(stdout: str) -> dict[str, dict[str, str]]:
    data = json.loads(stdout)
    return {c["name"]: c for c in data["checks"]}


# -- through the CLI ------------------------------------------------------------------------------


@pytest.mark.skipif(HAS_CAMERA or HAS_TPU, reason="this machine has a camera or an Edge TPU")
def test_doctor_here_says_no_camera_no_edgetpu_and_exits_nonzero(tmp_path: Path) -> None:
    r = run_cli("doctor", "--source", "0", "--state-dir", str(tmp_path), timeout=120)  # a camera is asked for
    print("\n" + r.stdout)
    assert r.returncode == int(ExitCode.PROBLEMS) == 9, r.stdout + r.stderr
    assert "no camera: no /dev/video* device" in r.stdout
    assert "no Edge TPU: no /dev/apex_* and no USB device 1a6e:089a or 18d1:9302" in r.stdout
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["CHECK", "RESULT", "DETAIL"]
    cam = next(i for i, line in enumerate(lines) if line.startswith("camera "))
    assert "FAIL" in lines[cam] and "fix:" in lines[cam + 1]  # every problem says how to fix it
    assert "problem(s)" in lines[-1]


def test_doctor_json_with_model_and_broker(tmp_path: Path, mobilenet_quant: Path, broker_port: int) -> None:
    r = run_cli(
        "doctor",
        "--model",
        str(mobilenet_quant),
        "--mqtt",
        f"mqtt://127.0.0.1:{broker_port}",
        "--state-dir",
        str(tmp_path),
        "--json",
        timeout=120,
    )
    rows = _rows(r.stdout)
    assert rows["model"]["result"] == "ok"
    assert "mobilenet_v2_1.0_224_quant.tflite on cpu" in rows["model"]["detail"]
    assert "ai_edge_litert" in rows["model"]["detail"] or "tflite_runtime" in rows["model"]["detail"]
    assert rows["interpreter"]["result"] == "ok"
    assert rows["broker"]["result"] == "ok" and f"127.0.0.1:{broker_port} reachable" in rows["broker"]["detail"]
    assert rows["state dir"]["result"] == "ok" and rows["disk"]["result"] in ("ok", "warn")
    if not HAS_CAMERA:  # no config and no --source: a camera is not required (issue 22)
        assert rows["camera"]["result"] == "skip" and r.returncode == 0, r.stdout
    # nothing left behind by the write test
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(HAS_CAMERA, reason="this machine has a camera")
def test_doctor_without_a_config_does_not_fail_for_a_missing_camera(tmp_path: Path, mobilenet_quant: Path) -> None:
    """Issue 22: a user who will run on a file or a folder, with no config, got exit 9 for the camera and
    for /var/lib/edge-resnet. The camera is information, one line says how to check one (--source), and
    the state folder is the one `run` would use without a config: the user's own, made by `run`."""
    env = {"HOME": str(tmp_path / "home"), "XDG_STATE_HOME": ""}
    r = run_cli("doctor", "--model", str(mobilenet_quant), env=env, unset=("STATE_DIRECTORY", "INVOCATION_ID"),
                timeout=120)
    print("\n" + r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = {line.split()[0]: line for line in r.stdout.splitlines()[1:] if line and not line.startswith(" ")}
    assert rows["camera"].split()[1] == "skip" and "no camera" in rows["camera"]
    assert rows["source"].split()[1] == "skip" and "edge-resnet doctor --source 0" in rows["source"]
    state = tmp_path / "home" / ".local" / "state" / "edge-resnet"
    assert f"{state} does not exist yet" in r.stdout and not state.exists()  # doctor changes nothing
    # the source the user names is the one checked: a folder passes, a camera that is not there fails
    folder = run_cli("doctor", "--model", str(mobilenet_quant), "--source", str(tmp_path), env=env, timeout=120)
    assert folder.returncode == 0 and "folder source" in folder.stdout, folder.stdout
    camera = run_cli("doctor", "--model", str(mobilenet_quant), "--source", "/dev/video0", env=env, timeout=120)
    assert camera.returncode == ExitCode.PROBLEMS and "/dev/video0 does not exist" in camera.stdout


def test_doctor_all_good_exits_0(tmp_path: Path, mobilenet_quant: Path, samples_dir: Path, broker_port: int) -> None:
    """With a folder source (no camera needed), a model that loads and a reachable broker: exit 0;
    a missing Edge TPU is only a warning when nothing asks for it."""
    cfg = tmp_path / "config.toml"
    state = tmp_path / "state"
    state.mkdir()
    cfg.write_text(
        f'device_id = "doctor-test"\nstate_dir = "{state}"\n'
        f'[model]\npath = "{mobilenet_quant}"\n'
        f'[source]\ntype = "folder"\npath = "{samples_dir}"\n'
        f'[mqtt]\nurl = "mqtt://127.0.0.1:{broker_port}"\n'
    )
    r = run_cli("doctor", "--config", str(cfg), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no problems" in r.stdout
    for name in ("config", "source", "model", "broker", "state dir"):
        assert any(line.startswith(name) and " ok " in line for line in r.stdout.splitlines()), name


def test_doctor_unreachable_broker_and_missing_state_dir(tmp_path: Path, closed_port: int) -> None:
    r = run_cli("doctor", "--mqtt", f"mqtt://127.0.0.1:{closed_port}", "--state-dir", str(tmp_path / "nope"), "--json")
    assert r.returncode == ExitCode.PROBLEMS
    rows = _rows(r.stdout)
    assert rows["broker"]["result"] == "FAIL" and "cannot connect" in rows["broker"]["detail"]
    assert "mosquitto" in rows["broker"]["fix"]
    assert rows["state dir"]["result"] == "FAIL" and "does not exist" in rows["state dir"]["detail"]
    assert rows["model"]["result"] == "FAIL" and "no model given" in rows["model"]["detail"]
    assert json.loads(r.stdout)["problems"] >= 3


@pytest.mark.skipif(HAS_TPU, reason="this machine has an Edge TPU")
def test_doctor_edgetpu_required_but_absent(tmp_path: Path, mobilenet_quant: Path) -> None:
    r = run_cli(
        "doctor", "--model", str(mobilenet_quant), "--device", "edgetpu", "--state-dir", str(tmp_path), "--json"
    )
    assert r.returncode == ExitCode.PROBLEMS
    rows = _rows(r.stdout)
    assert rows["edgetpu"]["result"] == "FAIL" and "Coral USB" in rows["edgetpu"]["fix"]
    assert rows["model"]["result"] == "FAIL" and "not compiled for the Edge TPU" in rows["model"]["detail"]


def test_doctor_bad_config_is_a_row_not_a_crash(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('device_id = "x"\nbogus_key = 1\n')
    r = run_cli("doctor", "--config", str(cfg), "--state-dir", str(tmp_path), "--json")
    assert r.returncode == ExitCode.PROBLEMS, r.stderr
    rows = _rows(r.stdout)
    assert rows["config"]["result"] == "FAIL" and "bogus_key" in rows["config"]["detail"]
    assert "config check" in rows["config"]["fix"]


# -- hardware checks on fake trees ----------------------------------------------------------------


def _usb_device(sys_root: Path, name: str, vid: str, pid: str, bus: int, dev: int) -> None:
    p = sys_root / "bus/usb/devices" / name
    p.mkdir(parents=True)
    (p / "idVendor").write_text(vid + "\n")
    (p / "idProduct").write_text(pid + "\n")
    (p / "busnum").write_text(f"{bus}\n")
    (p / "devnum").write_text(f"{dev}\n")


def test_coral_usb_found_by_both_ids(tmp_path: Path) -> None:
    sys_root = tmp_path / "sys"
    _usb_device(sys_root, "1-1", "1a6e", "089a", 1, 2)
    _usb_device(sys_root, "2-1", "18d1", "9302", 2, 3)
    _usb_device(sys_root, "1-2", "046d", "0825", 1, 4)  # a webcam
    (sys_root / "bus/usb/devices/usb1").mkdir()  # a hub without ids
    found = d.find_coral_usb(str(sys_root))
    assert [ids for _, ids, _ in found] == ["1a6e:089a", "18d1:9302"]


def test_edgetpu_rows_on_fake_tree(tmp_path: Path) -> None:
    sys_root, dev = tmp_path / "sys", tmp_path / "dev"
    _usb_device(sys_root, "2-1", "18d1", "9302", 2, 3)
    dev.mkdir()
    (dev / "apex_0").touch()
    rows = d.check_edgetpu(True, dev=str(dev), sys_root=str(sys_root), lib_probe=lambda: (True, "libedgetpu.so.1"))
    by_name = {r.name: r for r in rows}
    assert by_name[f"edgetpu {dev}/apex_0"].result is d.Result.OK
    assert by_name["edgetpu usb 18d1:9302"].result is d.Result.OK
    assert by_name["libedgetpu"].result is d.Result.OK
    assert not d.failed(rows)
    # a device present but no runtime library: a problem even when nothing asked for the TPU
    rows = d.check_edgetpu(False, dev=str(dev), sys_root=str(sys_root), lib_probe=lambda: (False, "not found"))
    assert [r.name for r in d.failed(rows)] == ["libedgetpu"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can open anything")
def test_edgetpu_usb_node_without_permission(tmp_path: Path) -> None:
    sys_root, dev = tmp_path / "sys", tmp_path / "dev"
    _usb_device(sys_root, "1-1", "1a6e", "089a", 1, 2)
    node = dev / "bus/usb/001/002"
    node.parent.mkdir(parents=True)
    node.touch()
    node.chmod(stat.S_IRUSR)
    rows = d.check_edgetpu(False, dev=str(dev), sys_root=str(sys_root), lib_probe=lambda: (True, "x"))
    assert d.failed(rows)[0].fix == d.UDEV_FIX


def test_no_edgetpu_is_a_warning_unless_required(tmp_path: Path) -> None:
    empty = str(tmp_path)
    rows = d.check_edgetpu(False, dev=empty, sys_root=empty, lib_probe=lambda: (False, "nope"))
    assert {r.result for r in rows} == {d.Result.WARN}
    rows = d.check_edgetpu(True, dev=empty, sys_root=empty, lib_probe=lambda: (False, "nope"))
    assert {r.result for r in rows} == {d.Result.FAIL}


def test_parse_throttled() -> None:
    assert d.parse_throttled("throttled=0x0") == ([], [])
    now, past = d.parse_throttled("throttled=0x50005\n")
    assert now == ["under-voltage", "throttled"] and past == ["under-voltage", "throttled"]
    assert d.parse_throttled("throttled=0x80000") == ([], ["soft temperature limit"])


@pytest.mark.parametrize(
    ("value", "result", "needle"),
    [("0x0", d.Result.OK, "no under-voltage"), ("0x50000", d.Result.WARN, "since boot"), ("0x1", d.Result.FAIL, "now")],
)
def test_throttling_with_a_fake_vcgencmd(tmp_path: Path, value: str, result: d.Result, needle: str) -> None:
    exe = tmp_path / "vcgencmd"
    exe.write_text(f"#!/bin/sh\necho throttled={value}\n")
    exe.chmod(0o755)
    [row] = d.check_throttling(str(exe))
    assert row.result is result and needle in row.detail
    if result is not d.Result.OK:
        assert "power supply" in row.fix or "heatsink" in row.fix


@pytest.mark.parametrize(
    ("milli", "result"), [("45000", d.Result.OK), ("72500", d.Result.WARN), ("85100", d.Result.FAIL)]
)
def test_temperature_from_thermal_zones(tmp_path: Path, milli: str, result: d.Result) -> None:
    zone = tmp_path / "class/thermal/thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text(milli + "\n")
    (zone / "type").write_text("cpu-thermal\n")
    [row] = d.check_temperature(str(tmp_path))
    assert row.result is result and "cpu-thermal" in row.detail


def test_no_video_nodes_on_fake_dev(tmp_path: Path) -> None:
    [row] = d.check_cameras(dev=str(tmp_path))
    assert row.result is d.Result.FAIL and "no camera" in row.detail
    [row] = d.check_cameras(dev=str(tmp_path), required=False)
    assert row.result is d.Result.WARN


def test_table_shows_fix_only_for_problems() -> None:
    table = d.format_table(
        [d.Check("a", d.Result.OK, "fine", "never shown"), d.Check("b", d.Result.FAIL, "broken", "do this")]
    )
    assert "never shown" not in table and "fix: do this" in table and "1 problem(s)" in table


def test_doctor_checks_the_camera_the_config_names(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'device_id = "cam"\nstate_dir = "{tmp_path}"\n'
        '[source]\ntype = "opencv"\ndevice = "/dev/v4l/by-id/usb-Example_Cam-video-index0"\n'
    )
    r = run_cli("doctor", "--config", str(cfg), "--json")
    assert r.returncode == ExitCode.PROBLEMS
    rows = _rows(r.stdout)
    assert rows["source"]["result"] == "FAIL"
    assert "usb-Example_Cam-video-index0 does not exist" in rows["source"]["detail"]
    assert "by-id" in rows["source"]["fix"]


def test_doctor_says_who_is_asking() -> None:
    [row] = d.check_user()
    if os.geteuid() == 0:
        assert row.result is d.Result.WARN and "sudo -u edge-resnet" in row.fix
    else:
        assert row.result is d.Result.OK


def test_doctor_picamera2_source_without_picamera2(tmp_path: Path) -> None:
    pytest.importorskip("cv2")
    try:
        import picamera2  # noqa: F401

        pytest.skip("picamera2 is installed here")
    except ImportError:
        pass
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'device_id = "pi"\nstate_dir = "{tmp_path}"\n[source]\ntype = "picamera2"\n')
    r = run_cli("doctor", "--config", str(cfg), "--json")
    assert r.returncode == ExitCode.PROBLEMS
    rows = _rows(r.stdout)
    assert "camera" not in rows  # a Pi camera is not a /dev/video* device to open with OpenCV
    assert rows["picamera2"]["result"] == "FAIL"
    assert "python3-picamera2" in rows["picamera2"]["fix"] and "--system-site-packages" in rows["picamera2"]["fix"]


@pytest.mark.hw
def test_doctor_on_a_device_finds_its_camera_and_edgetpu(tmp_path: Path) -> None:
    """On a device (`pytest -m hw`): a camera delivers a frame; an attached Edge TPU is seen with its runtime."""
    r = run_cli("doctor", "--state-dir", str(tmp_path), "--json", timeout=120)
    rows = _rows(r.stdout)
    assert any(name.startswith("camera /dev/video") and c["result"] == "ok" for name, c in rows.items()), rows
    if HAS_TPU:
        assert all(c["result"] == "ok" for name, c in rows.items() if name.startswith("edgetpu")), rows
        assert rows["libedgetpu"]["result"] == "ok", rows["libedgetpu"]


def test_doctor_names_a_wrong_broker_ca(tmp_path: Path, mobilenet_quant: Path, samples_dir: Path) -> None:
    """Issue 14 case 11: a TLS broker whose certificate the configured CA did not sign is a failed broker
    check with the MQTT sink's own diagnosis and fix (it was "reachable (TLS)"); the right CA passes."""
    from .helpers.broker import Broker, make_certs

    wrong_ca = make_certs(tmp_path / "other-ca")[0]
    b = Broker(tmp_path / "tls-broker", tls=True).start()
    try:
        state = tmp_path / "state"
        state.mkdir()
        rows = {}
        for name, ca in (("wrong", wrong_ca), ("right", b.ca_file)):
            cfg = tmp_path / f"{name}.toml"
            cfg.write_text(
                f'device_id = "doctor-tls"\nstate_dir = "{state}"\n'
                f'[model]\npath = "{mobilenet_quant}"\n'
                f'[source]\ntype = "folder"\npath = "{samples_dir}"\n'
                f'[mqtt]\nurl = "{b.url}"\nca_file = "{ca}"\n'
            )
            r = run_cli("doctor", "--config", str(cfg), "--json", timeout=120)
            rows[name] = _rows(r.stdout)["broker"]
        wrong, right = rows["wrong"], rows["right"]
        assert wrong["result"] == "FAIL", wrong
        assert "TLS certificate not accepted" in wrong["detail"] and "ca_file" in wrong["fix"], wrong
        assert right["result"] == "ok" and "TLS certificate verified" in right["detail"], right
    finally:
        b.stop()
