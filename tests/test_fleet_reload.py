"""A SIGHUP that changes `[fleet]` restarts the fleet agent of a running daemon (a real `edge-resnet run`
child and a real mosquitto): turned on, the agent starts and its retained presence
`<prefix>/<device>/fleet` appears; a changed table (its groups) stops the agent cleanly and starts one
for the new groups; the same table again changes nothing; turned off, the agent leaves (its presence
cleared), disconnects and no longer answers install commands, and Home Assistant's update entity goes.
Before, a running daemon kept whatever agent it had started with until a restart."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from tests.helpers.broker import Broker, Subscriber, broker, retained
from tests.helpers.run_child import RunChild
from tests.helpers.video import pick_samples, write_video

__all__ = ["broker"]  # the fixture

BASE = "edge-resnet/cam"
PRESENCE = f"{BASE}/fleet"
BAD_COMMAND = json.dumps({"job_id": "probe", "url": "http://127.0.0.1:9/m.tflite", "sha256": "0" * 64,
                          "size": 1000, "version": 0})  # fmt: skip  # refused at once: version must be >= 1


def cam_fleet_lines(b: Broker, word: str) -> int:
    """How many times mosquitto logged the agent's client (`cam-fleet`) doing `word`."""
    return sum(1 for ln in b.log.read_text(errors="replace").splitlines() if "cam-fleet" in ln and word in ln)


def model_update_announced(b: Broker) -> bool:
    doc = retained(b.port, "homeassistant/device/cam/config")
    return doc is not None and "model_update" in doc.json()["cmps"]


def test_sighup_starts_restarts_and_stops_the_fleet_agent(
    broker: Broker, tmp_path: Path, mobilenet_quant: Path, labels_1001: Path, samples_dir: Path
) -> None:
    video = tmp_path / "v.avi"
    write_video(video, pick_samples(samples_dir, 2), seconds_each=1.0, fps=10)
    conf = tmp_path / "c.toml"

    def write(fleet: str) -> None:
        conf.write_text("\n".join([
            'device_id = "cam"',
            f'state_dir = "{tmp_path / "state"}"',
            f'[model]\npath = "{mobilenet_quant}"\nlabels = "{labels_1001}"\nthreads = 1',
            f'[source]\ntype = "file"\npath = "{video}"\nloop = true',
            "[pipeline]\nmax_fps = 5",
            f'[mqtt]\nurl = "{broker.url}"',
            fleet,
        ]) + "\n")  # fmt: skip

    sub = Subscriber(broker.port, [f"{BASE}/#"]).start()
    d = RunChild(["--config", str(conf)], dict(os.environ, PYTHONUNBUFFERED="1"))

    def reloaded(n: int) -> None:
        d.p.send_signal(signal.SIGHUP)
        assert sub.wait_for(lambda _: sum("reload done" in ln for ln in d.err) == n, 30), d.tail()

    def presences() -> list[str]:
        return [m.text for m in sub.on(PRESENCE)]

    def answers() -> list[dict[str, object]]:
        return [m.json() for m in sub.on(f"{BASE}/model/job") if m.payload]

    write("")
    try:
        assert sub.wait_for(lambda _: any("ready" in ln for ln in d.err), 60), d.tail()
        assert presences() == [] and cam_fleet_lines(broker, "as cam-fleet") == 0  # no agent without [fleet]

        write('[fleet]\nenabled = true\ngroups = ["lab"]')
        reloaded(1)
        assert sub.wait_for(lambda _: len(presences()) == 1, 10), d.tail()
        assert json.loads(presences()[0])["groups"] == ["lab"]
        sub.client.publish(f"{BASE}/model/install", BAD_COMMAND, qos=1)
        assert sub.wait_for(lambda _: len(answers()) == 1, 10), d.tail()  # the agent listens
        assert answers()[0]["state"] == "rejected"
        assert sub.wait_for(lambda _: model_update_announced(broker), 10)  # the sink serves the update entity

        reloaded(2)  # the same [fleet]: the agent runs on
        assert len(presences()) == 1 and cam_fleet_lines(broker, "as cam-fleet") == 1, broker.tail_log()

        write('[fleet]\nenabled = true\ngroups = ["lab", "canary"]')
        reloaded(3)
        assert sub.wait_for(lambda _: len(presences()) == 2, 10), d.tail()
        assert json.loads(presences()[1])["groups"] == ["lab", "canary"]
        assert cam_fleet_lines(broker, "disconnected") == 1 and cam_fleet_lines(broker, "as cam-fleet") == 2

        write("[fleet]\nenabled = false")
        reloaded(4)
        assert sub.wait_for(lambda _: presences()[-1:] == [""], 10), d.tail()  # presence cleared
        assert retained(broker.port, PRESENCE) is None
        assert sub.wait_for(lambda _: cam_fleet_lines(broker, "disconnected") == 2, 10), broker.tail_log()
        sub.client.publish(f"{BASE}/model/install", BAD_COMMAND, qos=1)
        time.sleep(2.0)  # an agent answers within a few milliseconds; none does now
        assert len(answers()) == 1
        assert not model_update_announced(broker)  # and Home Assistant's update entity went with it
        assert d.p.poll() is None  # the same process all along
        print("\n" + "\n".join(ln for ln in d.err if "fleet" in ln and "INFO edge_resnet.daemon" in ln))
    finally:
        d.p.send_signal(signal.SIGTERM)
        d.p.wait(10)
        sub.stop()
