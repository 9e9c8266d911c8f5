"""`[trust]`: which public keys may sign the models this device runs. Pure (no key is read here:
`trust.load_policy` reads them), so loading a config stays cheap.

    [trust]
    keys = ["/etc/edge-resnet/keys/3f2a9c0d1e4b5a67.pub"]
    require_signature = true
    retired = ["0123456789abcdef"]   # key ids whose models are refused, listed or not
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .configtools import ConfigErrors, error_lines, from_dict
from .errors import ConfigError

KEY_ID = re.compile(r"^[0-9a-f]{16}$")  # the first 16 hex digits of the raw public key's SHA-256


@dataclass
class TrustConfig:
    """Rotation: add the new key's .pub to `keys`, sign with it, then put the old key's id in `retired`."""

    keys: list[str] = field(default_factory=list)  # .pub files from `edge-resnet keygen`
    require_signature: bool = False  # true: an unsigned or untrusted model never runs
    retired: list[str] = field(default_factory=list)  # key ids (the .pub file's name without .pub)

    def __post_init__(self) -> None:
        if self.require_signature and not self.keys:
            raise ConfigError(
                "[trust] require_signature = true needs at least one key; add keys = [\"/etc/edge-resnet/keys/ID.pub\"]"
            )
        for i, k in enumerate(self.keys):
            if not k.strip():
                raise ConfigError(f"[trust] keys[{i}] is empty; give the path of a .pub file from `edge-resnet keygen`")
        if len(set(self.keys)) != len(self.keys):
            raise ConfigError("[trust] keys: a file is listed twice; list each .pub once")
        for i, rid in enumerate(self.retired):
            if not KEY_ID.fullmatch(rid):
                raise ConfigError(
                    f"[trust] retired[{i}]: {rid!r} is not a key id; use the 16 hex digits of the key's "
                    "file name (ID.pub), e.g. \"3f2a9c0d1e4b5a67\""
                )


def trust_from_file(path: str | os.PathLike[str]) -> TrustConfig:
    """Only the `[trust]` table of a config file (`verify --config` needs nothing else: a workstation
    checks a model against a device's file without that device's camera or broker); a file without
    one gives the defaults. Every problem of the table at once, each line naming the file."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist; pass the path of a .toml file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {p} cannot be read ({e}); check permissions and encoding") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p} is not valid TOML: {e}") from None
    try:
        return from_dict(TrustConfig, data.get("trust", {}), "trust")
    except ConfigError as e:
        raise ConfigErrors([f"{p}: {line}" for line in error_lines(e)]) from None
