"""A new source or sink is one module plus one registry line: a toy source and a toy sink added
through `config.SOURCES` / `config.SINKS` alone run through `edge-resnet run`; and loading a config
(or the pure smoothing) imports no paho, cv2 or http.server."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import pytest

from edge_resnet import cli
from edge_resnet import config as configmod
from edge_resnet.capture import EndOfStream
from edge_resnet.errors import ConfigError
from edge_resnet.observation import Observation
from edge_resnet.sinks.base import SinkContext
from edge_resnet.sourceconfig import SourceCommon


@dataclass(kw_only=True)
class ToySourceConfig(SourceCommon):
    type: Literal["toy"] = "toy"
    frames: int = 4
    shade: int = 128


class ToyFrames:
    """Grey frames, then the end of the stream."""

    live = False

    def __init__(self, cfg: ToySourceConfig) -> None:
        self.cfg = cfg
        self.description = f"toy source ({cfg.frames} frames)"
        self._left = 0

    def open(self) -> None:
        self._left = self.cfg.frames

    def read(self) -> npt.NDArray[np.uint8] | None:
        if self._left == 0:
            raise EndOfStream("toy source done")
        self._left -= 1
        return np.full((240, 320, 3), self.cfg.shade, np.uint8)

    def close(self) -> None:
        pass


@dataclass
class ToySinkConfig:
    tag: str = "toy"


SEEN: list[tuple[str, str, Observation]] = []
STARTED = threading.Event()


class ToySink:
    name = "toy"

    def __init__(self, cfg: ToySinkConfig, ctx: SinkContext) -> None:
        self.cfg, self.ctx = cfg, ctx

    def start(self) -> None:
        STARTED.set()

    def publish(self, obs: Observation) -> None:
        SEEN.append((self.cfg.tag, self.ctx.device_id, obs))

    def stop(self, timeout: float = 2.0) -> None:
        pass

    def healthy(self) -> tuple[bool, str]:
        return True, "ok"


@pytest.fixture
def toys(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one registry line for each (here through monkeypatch, so the registries are restored)."""
    monkeypatch.setitem(
        configmod.SOURCES,
        "toy",
        configmod.SourceKind(ToySourceConfig, f"{__name__}:ToyFrames", lambda s: f"toy {s.frames} frames"),
    )
    monkeypatch.setitem(
        configmod.SINKS,
        "toy",
        configmod.SinkKind(
            ToySinkConfig,
            f"{__name__}:ToySink",
            lambda c: f"toy {c.tag}",
            configmod.Flag("--toy", "tag the toy sink", lambda c, v: ToySinkConfig(tag=v), "TAG"),
        ),
    )
    SEEN.clear()
    STARTED.clear()


def test_toy_source_and_sink_run_through_run_from_the_registries_alone(
    toys: None, tmp_path: Path, mobilenet_quant: Path, labels_1001: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'device_id = "toybox"\nstate_dir = "{tmp_path / "state"}"\n'
        '[source]\ntype = "toy"\nframes = 5\nshade = 90\n[toy]\ntag = "from-toml"\n'
    )
    assert "toy 5 frames" in configmod.summary(configmod.load(cfg))
    assert "sinks:     toy from-toml" in configmod.summary(configmod.load(cfg))
    argv = ["run", "--config", str(cfg), "--model", str(mobilenet_quant), "--labels", str(labels_1001)]
    assert cli.main([*argv, "--toy", "from-flag"]) == 0
    assert STARTED.is_set()
    assert len(SEEN) == 5 and all(tag == "from-flag" and dev == "toybox" for tag, dev, _ in SEEN)
    assert [obs.frame.seq for *_, obs in SEEN] == sorted(obs.frame.seq for *_, obs in SEEN)
    assert capsys.readouterr().out == ""  # the toy is a sink, so stdout's implied JSON lines stay off


def test_registry_tables_load_and_unknown_ones_are_named(toys: None, tmp_path: Path) -> None:
    cfg = configmod.config_from_dict({"source": {"type": "toy", "frames": 2}, "toy": {"tag": "t"}})
    assert cfg.source == ToySourceConfig(frames=2) and cfg.sinks == {"toy": ToySinkConfig("t")}
    assert list(cfg.active_sinks()) == ["toy"]
    with pytest.raises(ConfigError, match=r"\[toy\] unknown key 'tga'"):
        configmod.config_from_dict({"toy": {"tga": "t"}})
    with pytest.raises(ConfigError, match="toy"):  # the known list names registered kinds
        configmod.config_from_dict({"source": {"type": "toys"}})
    again = configmod.validate(dataclasses.replace(cfg))
    assert again.sinks == cfg.sinks and again.sinks["toy"] is not cfg.sinks["toy"]


@pytest.mark.parametrize("module", ["edge_resnet.smoothing", "edge_resnet.config"])
def test_config_and_smoothing_load_no_transport_or_camera(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        "heavy = [m for m in ('paho', 'paho.mqtt', 'cv2', 'http.server', 'edge_resnet.engine') if m in sys.modules]\n"
        "sinks = [m for m in sys.modules if m.startswith(('edge_resnet.sinks', 'edge_resnet.sources'))]\n"
        "print(heavy + sinks)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
