"""`python -m edge_resnet run ARGS` as a child process, as a user (or systemd) starts the daemon; and a
plain HTTP GET for its overlay. Shared by the end-to-end tests and the bench scripts that start the
daemon (bench/faults.py, bench/hardening.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TextIO

REPO = Path(__file__).resolve().parents[2]


def run_args(model: str | os.PathLike[str], labels: str | os.PathLike[str], source: str | os.PathLike[str],
             *more: str) -> list[str]:
    """`edge-resnet run` options: a model, its labels and a source, then `more`."""
    return ["-m", str(model), "--labels", str(labels), "--source", str(source), *more]


class RunChild:
    """The child runs in the repository with exactly `env`. Its stderr lines are read on a thread into
    `err` (each also written to `log`, when given); with `keep_stdout` its stdout lines go to `out`,
    otherwise stdout is thrown away."""

    def __init__(
        self,
        args: Sequence[str],
        env: Mapping[str, str],
        *,
        keep_stdout: bool = False,
        log: TextIO | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.args = list(args)
        self.out: list[str] = []
        self.err: list[str] = []
        self.p = subprocess.Popen(
            [sys.executable, "-m", "edge_resnet", "run", *self.args],
            stdout=subprocess.PIPE if keep_stdout else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(env),
            cwd=REPO,
            preexec_fn=preexec_fn,
        )
        self.readers = [_reader(self.p.stderr, self.err, log)]
        if keep_stdout:
            self.readers.append(_reader(self.p.stdout, self.out, None))

    def tail(self, n: int = 25) -> str:
        """The last `n` lines of stderr, for a failure message."""
        return "\n".join(list(self.err)[-n:])

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (the daemon's clean stop), wait up to `timeout` (TimeoutExpired: it did not stop), then
        SIGKILL whatever still runs; its exit code."""
        self.p.terminate()
        try:
            self.p.wait(timeout)
        finally:
            self.kill()
        return self.p.returncode

    def kill(self, timeout: float = 5.0) -> None:
        """SIGKILL, if it still runs, and reap it."""
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(timeout)


def _reader(stream: Iterable[str] | None, sink: list[str], log: TextIO | None) -> threading.Thread:
    def pump() -> None:
        assert stream is not None
        for line in stream:
            line = line.rstrip("\n")
            sink.append(line)
            if log is not None:
                log.write(line + "\n")
                log.flush()

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    return t


def http_get(url: str, timeout: float = 3.0, headers: Mapping[str, str] | None = None) -> tuple[int, str]:
    """(status, body) of a GET, error statuses included; status 0 (and the error) when nothing answers."""
    req = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return int(r.status), r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return int(e.code), e.read().decode("utf-8", "replace")
    except OSError as e:
        return 0, str(e)
