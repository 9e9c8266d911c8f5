"""A separate process running an MqttSink, so tests can kill -9 it.

    python -m tests.helpers.mqtt_child URL STATE_DIR DEVICE_ID CLASSIFIED_JSON SAMPLES_DIR N_CHANGES [HOLD_S]

Publishes N_CHANGES label changes (cycling through the classified photos), prints `published N`
and then keeps running (publishing the last observation every 0.1 s) for HOLD_S seconds
(default: forever), until it is killed or gets SIGTERM (clean stop: `offline`).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

from edge_resnet.observation import Status
from edge_resnet.sinks.mqtt import MqttConfig, MqttSink
from tests.helpers.observations import from_json, observation


def main() -> int:
    url, state_dir, device_id, cjson, samples, n = sys.argv[1:7]
    hold = float(sys.argv[7]) if len(sys.argv) > 7 else float("inf")
    cs = from_json(Path(cjson).read_text(), Path(samples))
    sink = MqttSink(MqttConfig(url=url, heartbeat_s=5.0), device_id, lambda: Status(True, "ok"), Path(state_dir))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    sink.start()
    seq = 0
    for i in range(int(n)):
        seq += 1
        sink.publish(observation(cs[i % len(cs)], seq, changed=True))
        time.sleep(0.01)
    time.sleep(0.3)  # let the sink thread write the changes to SQLite
    print(f"published {n}", flush=True)
    end = time.monotonic() + hold
    last = cs[(int(n) - 1) % len(cs)]
    while not stop.is_set() and time.monotonic() < end:
        seq += 1
        sink.publish(observation(last, seq, changed=False))
        stop.wait(0.1)
    sink.stop(2.0)
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
