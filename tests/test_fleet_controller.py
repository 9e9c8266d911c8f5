"""The rollout controller and `fleet status` (issue 23, part 3): the pure decisions (waves, gate, outcomes,
rows), then `edge-resnet fleet` as a child process against simulated devices on a real mosquitto
(tests/helpers/fleet_sim.py: 500 devices, every 20th one failing its health window)."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_resnet.errors import ExitCode, InputError
from edge_resnet.fleet.controller import Outcome, Plan, gate_passed, outcome_of, plan_waves, select
from edge_resnet.fleet.status import row, rows, table
from edge_resnet.fleet.view import DeviceDocs, parse_topic

from .conftest import run_cli
from .helpers.broker import free_port
from .helpers.fleet_sim import FleetSim, fleet_broker
from .helpers.run_child import RunChild

TFLITE = b"\x1c\x00\x00\x00TFL3" + bytes(range(256)) * 40  # a model file as far as the controller reads one
GATE = ["--canary", "20", "--step-percent", "20", "--max-failed-percent", "10"]


# -- pure decisions --


def test_waves_are_the_canary_then_steps_of_the_group_in_order() -> None:
    devices = [f"d{i:03d}" for i in range(95)]
    waves = plan_waves(devices, canary=5, step_percent=20)
    assert [len(w) for w in waves] == [5, 19, 19, 19, 19, 14]
    assert [d for w in waves for d in w] == devices
    assert plan_waves(devices[:3], canary=10, step_percent=50) == [devices[:3]]
    assert plan_waves(devices[:3], canary=1, step_percent=1) == [[d] for d in devices[:3]]  # at least 1 a wave
    assert plan_waves([], 1, 10) == []


def test_the_gate_stops_on_more_than_the_percentage_of_devices_sent_so_far() -> None:
    assert not gate_passed(1, 10, 10.0)  # 10% is not more than 10%
    assert gate_passed(2, 10, 10.0)
    assert not gate_passed(25, 500, 10.0)
    assert gate_passed(1, 1, 0.0)
    assert not gate_passed(0, 0, 0.0)


def test_only_a_terminal_status_of_this_job_is_an_outcome() -> None:
    doc = {"job_id": "v2-abc", "state": "verifying", "reason": "health window"}
    assert outcome_of(None, "v2-abc") is None
    assert outcome_of(doc, "v2-abc") is None
    assert outcome_of({**doc, "state": "applied", "reason": ""}, "v2-abc") == (Outcome.APPLIED, "")
    assert outcome_of({**doc, "state": "rolled_back", "reason": "slow"}, "v2-abc") == (Outcome.ROLLED_BACK, "slow")
    assert outcome_of({**doc, "state": "rejected"}, "v2-abc") == (Outcome.REJECTED, "health window")
    assert outcome_of({**doc, "state": "applied"}, "v1-old") is None  # an older job's retained status


def test_select_skips_devices_running_the_version_and_offline_ones_and_sorts_the_rest() -> None:
    def docs(name: str, groups: list[str], running: int | None, availability: str | None = "online") -> DeviceDocs:
        return DeviceDocs(name, presence={"groups": groups, "running_version": running}, availability=availability)

    devices = {d.device: d for d in (
        docs("c", ["cams"], 1), docs("a", ["cams", "lobby"], 1), docs("b", ["cams"], 3), docs("x", ["yard"], 1),
        docs("d", ["cams"], 1, "offline"), docs("e", ["cams"], None, None),
    )}  # fmt: skip
    todo, skipped = select(devices, "cams", 3)
    assert todo == ["a", "c", "e"]
    assert skipped == {"b": "already running version 3", "d": "availability offline"}


def test_plan_refuses_impossible_values_with_the_flag_to_fix() -> None:
    for kw, flag in (({"canary": 0}, "--canary"), ({"step_percent": 0}, "--step-percent"),
                     ({"job_id": "a/b"}, "--job-id"), ({"wave_timeout_s": 0}, "--wave-timeout")):  # fmt: skip
        with pytest.raises(InputError, match=flag):
            Plan("cams", **kw)  # type: ignore[arg-type]


def test_topics_map_to_device_documents_under_a_prefix_with_slashes() -> None:
    assert parse_topic("site/a", "site/a/cam-1/model/job") == ("cam-1", "model/job")
    assert parse_topic("site/a", "site/a/cam-1/fleet") == ("cam-1", "fleet")
    assert parse_topic("site/a", "site/a/cam-1/events") is None
    assert parse_topic("site/a", "site/b/cam-1/state") is None
    assert parse_topic("site/a", "site/a/group/model/job") is None


def test_a_row_takes_health_from_the_state_document_and_offline_from_availability() -> None:
    d = DeviceDocs(
        "cam-1",
        presence={"groups": ["cams"], "running_version": 2, "model": "old.tflite", "ts": 100.0},
        job={"job_id": "v3-x", "state": "rolled_back", "reason": "one constant label", "ts": 200.0},
        state={"model": "r50.tflite", "model_version": 2, "healthy": True, "published_at": 150.0},
        availability="online",
    )
    r = row(d)
    assert (r.model, r.version, r.job, r.state, r.healthy, r.last_seen) == ("r50.tflite", 2, "v3-x", "rolled_back",
                                                                             True, 200.0)  # fmt: skip
    lagging = DeviceDocs("cam-1", presence={"running_version": 3}, state={"model_version": 2})
    assert row(lagging).version == 3 and row(DeviceDocs("cam-1", state={"model_version": 2})).version == 2
    off = row(DeviceDocs("cam-2", presence={"groups": ["cams"], "running_version": 1}, availability="offline"))
    assert (off.healthy, off.health, off.version, off.model) == (False, "offline", 1, None)
    text = table([r, off], now=260.0)
    assert text.splitlines()[0].split() == ["DEVICE", "MODEL", "VERSION", "JOB", "STATE", "HEALTHY", "LAST", "SEEN"]
    assert "rolled_back (one constant label)" in text and "1m ago" in text and "no (offline)" in text


# -- the controller and status through the CLI, on a real broker --


@pytest.fixture
def fleet_port(tmp_path: Path) -> Iterator[int]:
    b = fleet_broker(tmp_path / "broker")
    try:
        yield b.port
    finally:
        b.stop()


@pytest.fixture
def model(tmp_path: Path) -> Path:
    p = tmp_path / "model.tflite"
    p.write_bytes(TFLITE)
    return p


def rollout(port: int, model: str | Path, *args: str, timeout: float = 120) -> tuple[int, dict[str, Any], str]:
    """`edge-resnet fleet rollout ... --json`: (exit code, result, progress lines on stderr)."""
    p = run_cli("fleet", "rollout", str(model), "--broker", f"mqtt://127.0.0.1:{port}", "--json", *args,
                timeout=timeout)  # fmt: skip
    result = json.loads(p.stdout) if p.stdout.strip() else {}
    return p.returncode, result, p.stderr


def canary_devices(result: dict[str, Any]) -> set[str]:
    return {d["device"] for d in result["waves"][0]["devices"]}


def test_a_bad_version_stops_after_the_canary_wave_and_only_the_canaries_ever_ran_it(
    fleet_port: int, model: Path
) -> None:
    sim = FleetSim(fleet_port, 500, bad_versions={3}).start()
    try:
        code, result, progress = rollout(fleet_port, model, "--group", "cams", "--version", "3", *GATE)
    finally:
        sim.stop()
    assert code == ExitCode.VERIFY, progress
    assert result["stopped"] and len(result["waves"]) == 1 and result["failed"] == 20
    assert len(result["not_sent"]) == 480
    canaries = canary_devices(result)
    assert len(canaries) == 20
    assert sim.ran[3] == canaries  # the sims record every device that swapped the bad version in
    assert {name for name, _ in sim.commands} == canaries  # nobody else was even asked
    lines = progress.splitlines()
    assert any(line.startswith("canary (1/6): 20 devices, 0 applied, 20 rolled back") for line in lines), progress
    assert any(line.startswith("stopped: 20 of 20 devices failed (100.0%)") for line in lines), progress


def test_a_good_version_rolls_through_every_wave_with_the_failing_five_percent_under_the_gate(
    fleet_port: int, model: Path
) -> None:
    sim = FleetSim(fleet_port, 500, bad_versions={3}).start()
    try:
        code, result, progress = rollout(fleet_port, model, "--group", "cams", "--version", "2", *GATE)
    finally:
        sim.stop()
    assert code == ExitCode.PROBLEMS, progress  # done, but 25 devices failed (within the gate)
    assert not result["stopped"] and result["sent"] == 500
    assert [len(w["devices"]) for w in result["waves"]] == [20, 100, 100, 100, 100, 80]
    failed = {d["device"] for w in result["waves"] for d in w["devices"] if d["outcome"] != "applied"}
    assert failed == sim.failing and len(failed) == 25
    assert result["applied"] == 475 and result["failed_percent"] == 5.0
    assert sim.ran[2] == set(sim.devices)  # every device swapped it in; the failing ones swapped back
    assert all(sim.devices[n].running_version == (1 if n in failed else 2) for n in sim.devices)
    wave_lines = [line for line in progress.splitlines() if line.startswith(("canary (", "wave "))]
    assert len(wave_lines) == 6, progress  # one line per wave
    # every command is the protocol's: the file's digest and size, the version, one job id for all
    cmd = sim.commands[0][1]
    assert cmd["sha256"] == hashlib.sha256(TFLITE).hexdigest() and cmd["size"] == len(TFLITE)
    assert cmd["version"] == 2 and cmd["url"] == str(model) and {c["job_id"] for _, c in sim.commands} == {
        result["job_id"]}  # fmt: skip


def test_all_applied_exits_0_and_the_same_rollout_again_installs_nothing(fleet_port: int, model: Path) -> None:
    sim = FleetSim(fleet_port, 30, fail_every=1000, fail_offset=999).start()
    try:
        code, result, progress = rollout(fleet_port, model, "--group", "cams", "--version", "2", "--canary", "3",
                                         "--step-percent", "50")  # fmt: skip
        assert code == ExitCode.OK and result["all_applied"] and result["applied"] == 30, progress
        sent = len(sim.commands)
        code, again, progress = rollout(fleet_port, model, "--group", "cams", "--version", "2")
    finally:
        sim.stop()
    assert code == ExitCode.OK and again["sent"] == 0 and again["all_applied"], progress
    assert set(again["skipped"].values()) == {"already running version 2"}
    assert len(sim.commands) == sent == 30


def test_a_device_that_says_nothing_counts_as_failed_and_an_offline_one_is_skipped(
    fleet_port: int, model: Path
) -> None:
    sim = FleetSim(fleet_port, 10, fail_every=1000, fail_offset=999).start()
    ghost = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="ghost", protocol=mqtt.MQTTv5)
    ghost.connect("127.0.0.1", fleet_port)
    ghost.loop_start()
    try:
        # sorted first, so it is the canary: present, online, and never answering
        presence = {"device": "aaa-ghost", "groups": ["cams"], "running_version": 1}
        infos = [ghost.publish("edge-resnet/aaa-ghost/fleet", json.dumps(presence), 1, True),
                 ghost.publish("edge-resnet/cam-0009/availability", "offline", 1, True)]
        for info in infos:
            info.wait_for_publish(5)
        code, result, progress = rollout(fleet_port, model, "--group", "cams", "--version", "2", "--canary", "1",
                                         "--wave-timeout", "1.5", "--max-failed-percent", "50")  # fmt: skip
    finally:
        ghost.disconnect()
        ghost.loop_stop()
        sim.stop()
    assert code == ExitCode.VERIFY, progress
    assert result["waves"][0]["devices"] == [
        {"device": "aaa-ghost", "outcome": "no_answer", "reason": "no status for the job within 1.5 s"}]
    assert result["skipped"] == {"cam-0009": "availability offline"}
    assert "cam-0009" not in result["not_sent"] and len(result["not_sent"]) == 9
    assert sim.commands == []


def test_a_config_file_names_the_broker_and_prefix_and_a_group_command_is_not_used(
    fleet_port: int, model: Path, tmp_path: Path
) -> None:
    sim = FleetSim(fleet_port, 40, prefix="site/a", groups=("cams",), fail_every=1000, fail_offset=999,
                   extra_groups=lambda i: ("lobby",) if i % 10 == 0 else ()).start()  # fmt: skip
    cfg = tmp_path / "fleet.toml"
    cfg.write_text(f'[mqtt]\nurl = "mqtt://127.0.0.1:{fleet_port}"\ntopic_prefix = "site/a"\n')
    try:
        p = run_cli("fleet", "rollout", str(model), "--config", str(cfg), "--group", "lobby", "--version", "4",
                    "--canary", "1", "--step-percent", "50")  # fmt: skip
    finally:
        sim.stop()
    assert p.returncode == ExitCode.OK, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("rollout v4-") and "4 devices in 3 waves" in lines[0]
    assert [line.split(":")[0] for line in lines[1:4]] == ["canary (1/3)", "wave 1 (2/3)", "wave 2 (3/3)"]
    assert lines[-1] == "done: 4 of 4 devices applied version 4, 0 failed (0.0%, gate 10%), 0 skipped"
    assert sorted(n for n, _ in sim.commands) == ["cam-0000", "cam-0010", "cam-0020", "cam-0030"]


def test_status_takes_the_first_broker_of_the_list_that_answers(fleet_port: int, tmp_path: Path) -> None:
    """[mqtt] url as a list (issue 24): a broker that is down ahead of the working one is passed over,
    as the devices fail over; before, the controller tried the first URL only."""
    sim = FleetSim(fleet_port, 3).start()
    cfg = tmp_path / "fleet.toml"
    cfg.write_text(f'[mqtt]\nurl = ["mqtt://127.0.0.1:{free_port()}", "mqtt://127.0.0.1:{fleet_port}"]\n')
    try:
        p = run_cli("fleet", "status", "--config", str(cfg), "--json")
    finally:
        sim.stop()
    assert p.returncode == ExitCode.OK, p.stderr
    assert [d["device"] for d in json.loads(p.stdout)["devices"]] == ["cam-0000", "cam-0001", "cam-0002"]


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


def test_a_signed_bundle_over_http_is_read_once_for_digest_size_and_version(
    fleet_port: int, models_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("cryptography")
    from edge_resnet.bundle import BundleMeta, write_bundle
    from edge_resnet.classify import read_labels
    from edge_resnet.fleet.keys import generate, load_private
    from edge_resnet.fleet.manifest import sign_model
    from edge_resnet.prepspec import PRESETS

    served = tmp_path / "www"
    served.mkdir()
    meta = BundleMeta(preprocess=PRESETS["inception"], labels=read_labels(models_dir / "imagenet_labels_1001.txt"),
                      label_offset=1, output_kind="probabilities")  # fmt: skip
    bundle = write_bundle((models_dir / "mobilenet_v2_1.0_224_quant.tflite").read_bytes(), meta, served / "m.tflite")
    key = generate(tmp_path / "keys")[1]
    sign_model(bundle, load_private(key), 7)
    data = bundle.read_bytes()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: _Files(*a, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/m.tflite"
    sim = FleetSim(fleet_port, 5, fail_every=1000, fail_offset=999).start()
    try:
        code, result, progress = rollout(fleet_port, url, "--group", "cams", "--canary", "5")
        bad, _, why = rollout(fleet_port, url, "--group", "cams", "--version", "6")
    finally:
        sim.stop()
        server.shutdown()
    assert code == ExitCode.OK and result["version"] == 7, progress
    cmd = sim.commands[0][1]
    assert (cmd["url"], cmd["version"], cmd["size"], cmd["sha256"]) == (url, 7, len(data),
                                                                         hashlib.sha256(data).hexdigest())  # fmt: skip
    assert bad == ExitCode.MODEL and "--version 6 but the bundle's signature says version 7" in why


def test_bad_input_is_one_line_with_its_exit_code(fleet_port: int, model: Path, tmp_path: Path) -> None:
    sim = FleetSim(fleet_port, 3).start()
    broker = f"mqtt://127.0.0.1:{fleet_port}"
    ours = ("--group", "cams", "--broker", broker)
    try:
        cases = {
            "usage": run_cli("fleet", "rollout", str(model), *ours, "--step-percent", "150"),
            "no version": run_cli("fleet", "rollout", str(model), *ours),
            "digest": run_cli("fleet", "rollout", str(model), *ours, "--version", "2", "--sha256", "0" * 64),
            "missing": run_cli("fleet", "rollout", str(tmp_path / "nope.tflite"), *ours, "--version", "2"),
            "group": run_cli("fleet", "rollout", str(model), "--group", "yard", "--broker", broker, "--version", "2"),
            "broker": run_cli("fleet", "status", "--broker", f"mqtt://127.0.0.1:{free_port()}"),
        }
    finally:
        sim.stop()
    expect = {"usage": ExitCode.USAGE, "no version": ExitCode.MODEL, "digest": ExitCode.MODEL,
              "missing": ExitCode.MODEL, "group": ExitCode.INPUT, "broker": ExitCode.CONFIG}  # fmt: skip
    for name, p in cases.items():
        assert p.returncode == expect[name], (name, p.stderr)
    for name in ("no version", "digest", "missing", "group", "broker"):
        err = cases[name].stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("edge-resnet: error: "), (name, err)
    assert "give --version N" in cases["no version"].stderr
    assert "groups: cams" in cases["group"].stderr
    assert "cannot connect to the broker" in cases["broker"].stderr
    assert sim.commands == []


def test_status_lists_every_one_of_1000_retained_statuses(fleet_port: int) -> None:
    sim = FleetSim(fleet_port, 1000, extra_groups=lambda i: ("lobby",) if i % 100 == 0 else ()).start()
    try:
        sim.seed_jobs("v2-abcdef", 2)
        js = run_cli("fleet", "status", "--broker", f"mqtt://127.0.0.1:{fleet_port}", "--json")
        text = run_cli("fleet", "status", "--broker", f"mqtt://127.0.0.1:{fleet_port}")
        lobby = run_cli("fleet", "status", "--broker", f"mqtt://127.0.0.1:{fleet_port}", "--group", "lobby")
    finally:
        sim.stop()
    assert js.returncode == text.returncode == lobby.returncode == 0, js.stderr + text.stderr
    devices = json.loads(js.stdout)["devices"]
    assert [d["device"] for d in devices] == sorted(sim.devices)
    assert all((d["version"], d["job"], d["state"], d["healthy"], d["model"]) == (2, "v2-abcdef", "applied", True,
               sim.model) and d["last_seen"] > time.time() - 120 for d in devices)  # fmt: skip
    lines = text.stdout.splitlines()
    assert len(lines) == 1 + 1000 + 1 and lines[0].startswith("DEVICE")
    assert {line.split()[0] for line in lines[1:-1]} == set(sim.devices)
    assert lines[-1] == "1000 devices: 1000 online, 1000 healthy; jobs: 1000 applied"
    assert [line.split()[0] for line in lobby.stdout.splitlines()[1:-1]] == [f"cam-{i:04d}" for i in range(0, 1000,
                                                                                                         100)]


def test_status_rows_follow_the_broker(fleet_port: int) -> None:
    """The library view without the CLI: rows() over FleetView sees a device go offline."""
    from edge_resnet.fleet.view import FleetView
    from edge_resnet.sinkconfig import MqttConfig

    sim = FleetSim(fleet_port, 3).start()
    try:
        with FleetView(MqttConfig(url=f"mqtt://127.0.0.1:{fleet_port}")) as view:
            assert [r.healthy for r in rows(view.devices())] == [True, True, True]
            sim.devices["cam-0001"].client.publish("edge-resnet/cam-0001/availability", "offline", 1, True)
            assert view.wait(lambda ds: ds["cam-0001"].availability == "offline", 10)
            assert [(r.device, r.healthy) for r in rows(view.devices(), "cams")][1] == ("cam-0001", False)
    finally:
        sim.stop()


def test_two_real_daemons_take_a_good_version_and_the_canary_stops_a_broken_one(
    fleet_port: int, models_dir: Path, samples_dir: Path, tmp_path: Path
) -> None:
    """The controller against the device side as it ships: `edge-resnet run` with `[fleet]` on."""
    from edge_resnet.bundle import BundleMeta, write_bundle
    from edge_resnet.classify import read_labels
    from edge_resnet.fleet.view import FleetView
    from edge_resnet.prepspec import PRESETS
    from edge_resnet.sinkconfig import MqttConfig

    meta = BundleMeta(preprocess=PRESETS["inception"], labels=read_labels(models_dir / "imagenet_labels_1001.txt"),
                      label_offset=1, output_kind="probabilities")  # fmt: skip
    flat = (models_dir / "mobilenet_v2_1.0_224_quant.tflite").read_bytes()
    served = tmp_path / "www"
    served.mkdir()
    first = write_bundle(flat, meta, tmp_path / "v1.tflite")
    write_bundle(flat, meta, served / "v2.tflite")
    shutil.copy(models_dir / "invalid_invoke.tflite", served / "broken.tflite")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: _Files(*a, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    broker = f"mqtt://127.0.0.1:{fleet_port}"
    daemons = []
    for name in ("cam-a", "cam-b"):
        cfg = tmp_path / f"{name}.toml"
        cfg.write_text(
            f'device_id = "{name}"\nstate_dir = "{tmp_path / name}"\n[model]\npath = "{first}"\n'
            f'[source]\ntype = "folder"\npath = "{samples_dir}"\ninterval_s = 0\nloop = true\n'
            f'[pipeline]\nmax_fps = 5.0\n[stdout]\nenabled = false\n[mqtt]\nurl = "{broker}"\n'
            '[fleet]\nenabled = true\ngroups = ["cams"]\nhealth_window_s = 3\nstart_delay_max_s = 0\n'
        )
        daemons.append(RunChild(["--config", str(cfg)], os.environ))
    try:
        with FleetView(MqttConfig(url=broker)) as view:
            up = view.wait(lambda ds: all(ds.get(n) and ds[n].presence for n in ("cam-a", "cam-b")), 90)
        assert up, "\n".join(d.tail() for d in daemons)
        wave = ("--group", "cams", "--canary", "1", "--step-percent", "50", "--wave-timeout", "60")
        good, good_result, good_log = rollout(fleet_port, f"{base}/v2.tflite", "--version", "2", *wave)
        bad, bad_result, bad_log = rollout(fleet_port, f"{base}/broken.tflite", "--version", "3", *wave)
        status = run_cli("fleet", "status", "--broker", broker, "--json")
    finally:
        for d in daemons:
            d.kill()
        server.shutdown()
    assert good == ExitCode.OK and good_result["applied"] == 2, good_log + "\n".join(d.tail() for d in daemons)
    assert bad == ExitCode.VERIFY and bad_result["not_sent"] == ["cam-b"], bad_log
    assert [(d["device"], d["outcome"]) for d in bad_result["waves"][0]["devices"]] == [("cam-a", "rejected")]
    rows_now = {d["device"]: d for d in json.loads(status.stdout)["devices"]}
    assert rows_now["cam-a"]["version"] == rows_now["cam-b"]["version"] == 2  # the broken one never ran
    assert rows_now["cam-b"]["job"] == good_result["job_id"] and rows_now["cam-a"]["state"] == "rejected"
