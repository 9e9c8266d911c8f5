"""What Home Assistant may ask of a device over MQTT (its buttons and model select), as pure
functions: reading a command, the models folder's choices, and whether a chosen name is one of them.
The sink (client.py) hands what they decide to the daemon through SinkContext.remote."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

MODEL_GLOB = "*.tflite"  # a model bundle in the models folder (the folder of [model] path)


class Command(Enum):
    """A button's payload on `<prefix>/<device>/command`."""

    DISCOVERY = "discovery"  # publish Home Assistant's discovery again
    RELOAD = "reload"  # reload config and model, as SIGHUP does


def parse_command(payload: bytes) -> Command | None:
    """The command a payload names (surrounding space ignored), None for anything else."""
    text = payload.decode("utf-8", "replace").strip().lower()
    return next((c for c in Command if c.value == text), None)


def models_in(folder: Path) -> tuple[str, ...]:
    """The model files a select offers: the folder's `*.tflite` files, by name; none if unreadable."""
    try:
        return tuple(sorted(p.name for p in folder.glob(MODEL_GLOB) if p.is_file()))
    except OSError:
        return ()


def chosen_model(folder: Path, payload: bytes) -> Path | str:
    """The model file a select command names, or why it is refused (one line): only a file name that
    the models folder holds now, never a path (nothing outside the folder can be named)."""
    name = payload.decode("utf-8", "replace").strip()
    offered = models_in(folder)
    if name not in offered:
        listed = ", ".join(offered) or "none"
        return f"model {name!r} is not in the models folder {folder} (it has: {listed}); choose one of those"
    return folder / name
