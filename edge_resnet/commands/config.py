"""`edge-resnet config check FILE`: validate a daemon configuration without starting anything."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from .. import config as configmod
from ..configtools import error_lines
from ..errors import ConfigError
from ..sourceconfig import FileSource, FolderSource


def register(sub: Any, name: str, helptext: str) -> None:
    p = sub.add_parser(
        name,
        help=helptext,
        description="Check a daemon configuration file: prints OK and a summary, or every problem in it, "
        "one line each naming the file, the [table] key and the fix (exit code 3).",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    c = actions.add_parser("check", help="validate FILE.toml", description="Validate a daemon configuration file.")
    c.add_argument("file", metavar="FILE.toml")
    c.set_defaults(func=check)


def warnings_for(cfg: configmod.Config) -> list[str]:
    """Files the config names that are not there (warnings: they may exist on the device only), and a
    password that would cross the network in clear text."""
    out = []
    named: list[tuple[str, str | None]] = [("[model] path", cfg.model.path), ("[model] labels", cfg.model.labels)]
    src = cfg.source
    if isinstance(src, FileSource | FolderSource):
        named.append(("[source] path", src.path))
    for key, value in named:
        if value and not Path(value).exists():
            out.append(f"{key}: {value} does not exist here")
    if cfg.mqtt is not None:
        out += cfg.mqtt.file_problems()  # CA, client certificate and key: readable by this user
    if cfg.mqtt is not None and cfg.mqtt.username and not os.environ.get(cfg.mqtt.password_env):
        out.append(f"[mqtt] username is set but ${cfg.mqtt.password_env} is empty here")
    if cfg.mqtt is not None and (clear := cfg.mqtt.clear_text_password()):
        out.append(clear)
    return out


def first_and_count(e: ConfigError, path: str) -> str:
    """One line for `run`: the first problem of the file, and how many more `config check` would list."""
    more = len(error_lines(e)) - 1
    if more < 1:
        return str(e)
    return f"{e} ... and {more} more error{'s' if more > 1 else ''}; run `edge-resnet config check {path}` to see all"


def check(args: argparse.Namespace) -> int:
    try:
        cfg = configmod.load(args.file)
    except ConfigError as e:
        for line in error_lines(e):  # all of them: a file with four mistakes takes one run to fix
            print(f"edge-resnet: error: {line}", file=sys.stderr)
        return int(e.exit_code)
    print(f"OK: {args.file}")
    print(configmod.summary(cfg))
    for w in warnings_for(cfg):
        print(f"warning: {w}")
    return 0
