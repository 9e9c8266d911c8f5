"""Issue 7 fault injection, short (about a minute and a half): the scenarios of bench/faults.py with real
processes (`python -m edge_resnet run` and mosquitto on 127.0.0.1) and short settings.

- the broker killed with -9 and restarted 3 times: every event seq arrives, in order;
- the daemon killed with -9 while the broker is down, restarted: the queued events arrive;
- corrupt models pushed in: refused and logged once each, the old model keeps classifying.

The long versions (10 restarts in 3 minutes, partitions, the source gone for 30 s) are
`bench/faults.py`; the soak is `bench/soak.py`.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def faults(data_dir: Path) -> ModuleType:
    """bench/faults.py as a module (bench/ is scripts, not a package); `data_dir` skips without test data."""
    name = "edge_resnet_bench_faults"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / "faults.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _report(res: Any) -> None:
    print(f"\n{res.scenario}: {res.figures}")
    for n in res.notes:
        print("  ", n)


def test_broker_killed_3_times_loses_nothing(faults: ModuleType, tmp_path: Path) -> None:
    res = faults.scenario_broker_faults(tmp_path, mode="kill", faults=3, duration_s=20.0, outages_s=(0.5, 1.5, 3.0))
    _report(res)
    assert res.figures.get("lost") == 0 and res.figures.get("out_of_order") == 0
    assert res.ok, res.failures()


def test_daemon_kill9_while_broker_down_queue_delivered(faults: ModuleType, tmp_path: Path) -> None:
    res = faults.scenario_kill9_while_broker_down(tmp_path, before_s=2.0, down_s=8.0, restarted_s=4.0)
    _report(res)
    assert res.figures.get("queued_at_kill9", 0) >= 3
    assert res.figures.get("lost") == 0
    assert res.ok, res.failures()


def test_corrupt_model_refused_once_old_keeps_classifying(faults: ModuleType, tmp_path: Path) -> None:
    res = faults.scenario_corrupt_model(tmp_path, observe_s=4.0)
    _report(res)
    assert res.figures.get("refusal_log_lines") == 2
    assert res.ok, res.failures()
