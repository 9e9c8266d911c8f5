"""The daemon with a `[fleet]` table, as a child process (kill -9 included), until config.py reads
`[fleet]` itself: `python -m tests.helpers.fleet_child CONFIG.toml` loads the file as `run --config`
does with `[fleet]` taken out, and runs the same Daemon with that FleetConfig. `FleetChild` starts
it and keeps its stdout (JSON lines) and stderr (log) lines."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main(argv: list[str]) -> int:
    from edge_resnet import config as configmod
    from edge_resnet.cli import _setup_logging
    from edge_resnet.daemon import Daemon
    from edge_resnet.errors import EdgeResnetError
    from edge_resnet.fleet.fleetconfig import fleet_from_dict

    _setup_logging(verbose=False)
    try:
        data = tomllib.loads(Path(argv[0]).read_text(encoding="utf-8"))
        fleet = fleet_from_dict(data.pop("fleet", {}))
        cfg = configmod.validate(configmod.config_from_dict(data))
        return Daemon(cfg, fleet=fleet).run()
    except EdgeResnetError as e:
        print(f"edge-resnet: error: {e}", file=sys.stderr, flush=True)
        return int(e.exit_code)


class FleetChild:
    def __init__(self, config: Path, env: Mapping[str, str] | None = None) -> None:
        self.out: list[str] = []
        self.err: list[str] = []
        self.p = subprocess.Popen(
            [sys.executable, "-m", "tests.helpers.fleet_child", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            cwd=REPO,
        )
        self._readers = [threading.Thread(target=_pump, args=(stream, sink), daemon=True)
                         for stream, sink in ((self.p.stdout, self.out), (self.p.stderr, self.err))]  # fmt: skip
        for t in self._readers:
            t.start()

    def drained(self, timeout: float = 5.0) -> None:
        """After the child exited: every line it wrote has been read."""
        for t in self._readers:
            t.join(timeout)

    def tail(self, n: int = 30) -> str:
        return "\n".join(list(self.err)[-n:])

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(5)


def _pump(stream: Iterable[str] | None, sink: list[str]) -> None:
    assert stream is not None
    for line in stream:
        sink.append(line.rstrip("\n"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
