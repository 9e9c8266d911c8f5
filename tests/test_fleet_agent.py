"""The fleet agent on a real mosquitto with the daemon side faked (tests/test_fleet_download.FakeDaemon):
what it publishes for a bad command and an empty retained one, a retained group command run once and
only re-published after a restart (a retained command is delivered again at every subscribe), and
`[mqtt] protocol = "3.1.1"` spoken like the sink does."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from edge_resnet.fleet.agent import FleetAgent
from edge_resnet.fleet.ledger import Ledger
from edge_resnet.fleetconfig import FleetConfig
from edge_resnet.sinkconfig import MqttConfig
from tests.helpers.broker import Broker, Subscriber, broker
from tests.test_fleet_download import F, FakeDaemon

__all__ = ["broker"]  # the fixture


def test_the_agent_answers_runs_a_retained_command_once_and_stops_quickly(broker: Broker, tmp_path: Path) -> None:
    model = tmp_path / "m.tflite"
    model.write_bytes(b"TFL3" * 1000)
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    cmd = {"job_id": "v2-x", "url": str(model), "sha256": sha, "size": model.stat().st_size, "version": 2}
    sub = Subscriber(broker.port, ["edge-resnet/#"]).start()
    fake = FakeDaemon(new_frames=[F(i * 0.1, True, 10.0, "ab"[i % 2]) for i in range(20)])
    cfg = FleetConfig(enabled=True, groups=["lab"], health_window_s=1.0, start_delay_max_s=0.0)
    mqtt_cfg = MqttConfig(url=broker.url, protocol="3.1.1")

    def statuses() -> list[dict[str, object]]:
        return [m.json() for m in sub.on("edge-resnet/cam/model/job")]

    agent = FleetAgent(cfg, mqtt_cfg, "cam", Ledger(tmp_path / "fleet"), fake)
    agent.start()
    try:
        assert sub.wait_for(lambda ms: any(m.topic == "edge-resnet/cam/fleet" for m in ms), 10)
        presence = sub.on("edge-resnet/cam/fleet")[-1].json()
        assert presence["groups"] == ["lab"] and presence["running_version"] == 1 and presence["model"] == "m.tflite"
        pub = sub.client.publish
        pub("edge-resnet/cam/model/install", json.dumps({**cmd, "job_id": "bad", "version": 0}), qos=1)
        pub("edge-resnet/cam/model/install", b"", qos=1, retain=True)  # clears nothing: ignored
        pub("edge-resnet/group/lab/model/install", json.dumps(cmd), qos=1, retain=True).wait_for_publish(5)
        assert sub.wait_for(lambda _: any(s["state"] == "applied" for s in statuses()), 20), statuses()
        assert statuses()[0] == {**statuses()[0], "job_id": "bad", "state": "rejected",
                                 "reason": "version must be a whole number >= 1"}  # fmt: skip
        assert fake.calls.count(f"swap_in v2-{sha[:12]}.tflite") == 1
    finally:
        t0 = time.monotonic()
        agent.stop(2.0)
        took = time.monotonic() - t0
    assert took < 2.5
    n = len(statuses())
    again = FleetAgent(cfg, mqtt_cfg, "cam", Ledger(tmp_path / "fleet"), fake)
    again.start()  # subscribing again delivers the retained command again: re-published, not run
    try:
        assert sub.wait_for(lambda _: len(statuses()) > n, 10)
        time.sleep(0.5)
        assert [s["state"] for s in statuses()[n:]] == ["applied"]
        assert sum(c.startswith("swap_in") for c in fake.calls) == 1
    finally:
        again.stop(2.0)
        sub.stop()
    assert "as cam-fleet (p2, c0" in broker.log.read_text()  # mosquitto's p2: MQTT 3.1.1, persistent session
    print(f"\nbad command rejected, retained group command applied once (re-published after a restart), stop in "
          f"{took:.2f} s, MQTT 3.1.1")  # fmt: skip
