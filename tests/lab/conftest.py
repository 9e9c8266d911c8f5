"""Device lab fixtures: the root filesystems built by tests/lab/run.sh, the host's broker, the models
every machine classifies with, and the record of each check (`.cache/lab/summary.json`).

Never skips: a lab step that cannot run is a failure (the lab runs only when asked: tests/lab/run.sh).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.helpers.broker import Broker

if TYPE_CHECKING:
    import pluggy

REPO = Path(__file__).resolve().parents[2]
LAB = Path(os.environ.get("EDGE_RESNET_LAB_CACHE", REPO / ".cache" / "lab")).resolve()
ROOTFS = ("arm64-bookworm", "arm64-trixie", "systemd", "amd64-trixie")
RESULTS: dict[str, dict[str, Any]] = {}
FIGURES: dict[str, list[str]] = {}


def lab_state() -> dict[str, Any]:
    """What run.sh prepared: the wheel and the ResNet-18 bundle (host.json), the root filesystems."""
    f = LAB / "host.json"
    if not f.exists():
        pytest.fail(f"{f} is missing: run the lab with `bash tests/lab/run.sh`, which builds what it needs")
    state: dict[str, Any] = json.loads(f.read_text())
    state["rootfs"] = {}
    for name in ROOTFS:
        p = LAB / "logs" / f"rootfs-{name}.path"
        path = p.read_text().strip() if p.exists() else ""
        if path and (Path(path) / ".lab-complete").exists():
            state["rootfs"][name] = path
    return state


def rootfs(prepared: dict[str, Any], name: str) -> Path:
    """A built root filesystem; a failure naming its build log when it was not built."""
    if name not in prepared["rootfs"]:
        pytest.fail(f"root filesystem {name} was not built: see {LAB / 'logs' / f'rootfs-{name}.log'}")
    return Path(prepared["rootfs"][name])


@pytest.fixture(scope="session")
def prepared() -> dict[str, Any]:
    return lab_state()


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Record a figure for this check: printed, and kept in summary.json."""
    name = request.node.name

    def add(text: str) -> None:
        FIGURES.setdefault(name, []).append(text)
        print(f"lab figure [{name}]: {text}", file=sys.stderr)

    return add


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pluggy.Result[pytest.TestReport], None]:
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" or (rep.when == "setup" and not rep.passed):
        ok = rep.passed
        if rep.skipped:  # the lab never skips: a check that could not run failed
            rep.outcome = "failed"
            ok = False
        fig = "; ".join(FIGURES.get(item.name, [])) or ("" if ok else str(rep.longrepr)[-400:])
        RESULTS[item.name] = {"ok": ok, "figure": fig}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """This part's results; tests/lab/summary.py merges the parts into summary.json."""
    part = os.environ.get("EDGE_RESNET_LAB_PART", "all")
    (LAB / "parts").mkdir(parents=True, exist_ok=True)
    (LAB / "parts" / f"{part}.json").write_text(json.dumps(RESULTS, indent=2) + "\n")


@pytest.fixture(scope="session")
def host_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """The host's mosquitto on loopback; the lab machines share the host's network and reach it."""
    b = Broker(tmp_path_factory.mktemp("lab-broker")).start()
    try:
        yield b
    finally:
        b.stop()


def eval_images(samples_dir: Path, n: int = 100) -> list[dict[str, Any]]:
    """The first `n` evaluation images (positions in labels.json not divisible by 5)."""
    entries: list[dict[str, Any]] = json.loads((samples_dir / "labels.json").read_text())
    return [e for i, e in enumerate(entries) if i % 5 != 0][:n]


def top1_by_file(stdout: str) -> dict[str, int]:
    """`classify --json` lines -> file name -> top-1 class index."""
    out: dict[str, int] = {}
    for line in stdout.splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            out[Path(rec["path"]).name] = int(rec["top_k"][0]["class_index"])
    return out


def host_run(args: list[str], timeout: float = 900, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
