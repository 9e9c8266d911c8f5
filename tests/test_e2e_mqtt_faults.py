"""Issue 7, must-shows 1 and 2 (short versions) through `edge-resnet run` and a real mosquitto.
The long run is `python -m tests.fault_mqtt --minutes 3 --restarts 10`."""

from __future__ import annotations

from pathlib import Path

from tests.fault_mqtt import broker_restarts, daemon_kill9_while_broker_down
from tests.helpers.broker import mosquitto_path


def test_broker_restarts_lose_no_event(data_dir: Path, tmp_path: Path) -> None:
    mosquitto_path()
    f = broker_restarts(seconds=30, restarts=4, tmp=tmp_path)
    print("\n" + f.line("daemon, broker restarts"))
    assert f.assigned >= 20, "too few label changes to mean anything"
    assert not f.lost and f.in_order and not f.still_queued


def test_daemon_kill9_while_broker_down_then_restarted(data_dir: Path, tmp_path: Path) -> None:
    mosquitto_path()
    f, at_kill = daemon_kill9_while_broker_down(tmp_path)
    print("\n" + f.line(f"daemon kill -9 with {at_kill} events queued, broker down"))
    assert at_kill >= 3
    assert not f.lost and f.in_order and not f.still_queued
    assert f.received == f.assigned
