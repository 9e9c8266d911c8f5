"""Quieting what native libraries print straight to file descriptor 2.

The TFLite interpreter announces "Created TensorFlow Lite XNNPACK delegate for CPU." on every
load, and TensorFlow prints cuDNN/cuBLAS registration errors and graph dumps on machines without a
GPU. None of it goes through Python logging, so the only way to keep a command's stderr to its
own lines is to point fd 2 at a temporary file around the native call and replay what matters.
With `-v` (root logger at DEBUG) nothing is captured: everything is shown as printed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator

# our own log records (edge_resnet.*, the converter included), with or without the journal's <N> prefix
_OURS = re.compile(r"^(<\d>)?(DEBUG|INFO|WARNING|ERROR|CRITICAL) edge_resnet[\w.]*: ")
KNOWN_NOISE = frozenset({"INFO: Created TensorFlow Lite XNNPACK delegate for CPU."})
FAILURE_TAIL = 40  # lines of captured output shown when the wrapped call fails


def verbose() -> bool:
    """`-v` was given: the root logger logs debug records."""
    return logging.getLogger().isEnabledFor(logging.DEBUG)


def ours(line: str) -> bool:
    """Keep only edge-resnet's own log lines (for TensorFlow's chatter during conversion)."""
    return bool(_OURS.match(line))


def not_known_noise(line: str) -> bool:
    """Keep everything except the interpreter's known announcements (for loading a model)."""
    return line.strip() not in KNOWN_NOISE


@contextlib.contextmanager
def filtered_stderr(
    keep: Callable[[str], bool] = not_known_noise, write: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Capture fd 2 while the block runs, then replay the lines `keep` accepts.

    When the block raises an error, the last lines are replayed whatever `keep` says (but the
    interpreter's known announcements, which never explain a failure), so a message like "see
    onnx2tf's messages above" stays true. Other threads' stderr lines written meanwhile
    are replayed too (late, never lost). `write` replays (a progress bar passes its own, so lines
    land above the bar instead of on it).
    """
    if verbose():
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no fd 2 (closed, or not a real file)
        yield
        return
    failed = False
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        except Exception:
            failed = True
            raise
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines = tmp.read().decode("utf-8", "replace").splitlines()
            # the XNNPACK banner is printed once per process, on the first model load: when that load
            # fails (an Edge TPU model whose delegate loads but cannot run, which `--device auto` then
            # answers with the CPU twin), replaying it would show the banner without -v after all
            shown = [ln for ln in lines if not_known_noise(ln)][-FAILURE_TAIL:] if failed else list(filter(keep, lines))
            if shown:
                (write or _write_stderr)("\n".join(shown) + "\n")


def _write_stderr(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()
