"""A `[[region]]` may not be named after a topic level the daemon uses itself under
`<prefix>/<device>/` (`model`, `fleet`, `state` ...): its topics `<prefix>/<device>/<region>/...` would
share the daemon's own. `config check` names the file, the table, the name and the fix; the list the
config refuses is checked against every topic the MQTT sink, Home Assistant's discovery and the fleet
agent really use."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from edge_resnet import config as configmod
from edge_resnet.config import RESERVED_REGION_NAMES
from edge_resnet.errors import ConfigError, ExitCode
from edge_resnet.fleet import agent
from edge_resnet.fleetconfig import FleetConfig
from edge_resnet.observation import Status
from edge_resnet.sinks.mqtt import MqttConfig, MqttSink, discovery

from .conftest import run_cli


def region_toml(name: str) -> str:
    return f'[model]\npath = "m.tflite"\n[[region]]\nname = "{name}"\nroi = [0, 0, 320, 240]\n'


def first_levels(topics: list[str], base: str) -> set[str]:
    return {t[len(base) + 1 :].split("/")[0] for t in topics if t.startswith(base + "/")}


def test_the_refused_names_are_the_daemons_own_topic_levels(tmp_path: Path) -> None:
    """Every topic under `<prefix>/<device>/` that the sink publishes or subscribes, that a Home Assistant
    entity reads or writes, and that the fleet agent uses: its first level is refused as a region name,
    and nothing else is."""
    base = "edge-resnet/cam1"
    sink = MqttSink(MqttConfig(url="mqtt://127.0.0.1:1"), "cam1", lambda: Status(True, "ok"), tmp_path)
    try:
        ours = [v for k, v in vars(sink).items() if k.endswith("_topic") and isinstance(v, str)]
    finally:
        sink.stop()
    ours.append(f"{base}/snapshot")  # the whole frame's picture (client.py builds it where it is sent)
    ours += discovery.topics(discovery.Announce("cam1")).values()
    ours += agent.topics(FleetConfig(enabled=True, groups=["lab"]), "edge-resnet", "cam1").values()
    levels = first_levels(ours, base)
    print(f"\nlevels under {base}/: {sorted(levels)}")
    assert levels == set(RESERVED_REGION_NAMES)


@pytest.mark.parametrize("name", sorted(RESERVED_REGION_NAMES))
def test_a_reserved_name_is_one_line_naming_the_file_and_the_fix(tmp_path: Path, name: str) -> None:
    p = tmp_path / "c.toml"
    p.write_text(region_toml(name))
    with pytest.raises(ConfigError) as ei:
        configmod.load(p)
    assert str(ei.value) == (
        f"{p}: [[region]] name {name!r} is a topic the daemon uses itself (<prefix>/<device>/{name}); "
        f"rename it, e.g. `{name}_area`"
    )


def test_config_check_refuses_a_region_named_model(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text(region_toml("model"))
    r = run_cli("config", "check", str(p), timeout=60)
    print(r.stderr)
    assert r.returncode == ExitCode.CONFIG, r.stderr
    assert r.stderr.splitlines() == [
        f"edge-resnet: error: {p}: [[region]] name 'model' is a topic the daemon uses itself "
        "(<prefix>/<device>/model); rename it, e.g. `model_area`"
    ]


@pytest.mark.parametrize("name", ["model_area", "Model", "fleets", "door"])
def test_names_near_them_are_fine(name: str) -> None:
    """MQTT topics are case-sensitive and levels whole words: only the exact level is refused."""
    cfg = configmod.validate(configmod.config_from_dict(tomllib.loads(region_toml(name))))
    assert [r.name for r in cfg.regions] == [name]
