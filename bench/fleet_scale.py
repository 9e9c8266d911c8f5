"""The fleet controller at scale (issue 23, must-show 3): `edge-resnet fleet status` over 1,000 retained
statuses, and `fleet rollout` to 500 simulated devices (5% failing) of a good and of a bad version.

    .venv/bin/python bench/fleet_scale.py [--status-devices 1000] [--rollout-devices 500] [--repeats 5]

Everything runs on one real mosquitto (tests/helpers/broker.py) with the simulated devices of
tests/helpers/fleet_sim.py hosted in this process; each `edge-resnet fleet ...` is a child process,
as a user runs it, so its time includes Python's start-up and the broker connection. Prints the wall
time and the CPU time (user + sys of the child) of each run; the requirement is under 2 s for status.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_resnet.bench.core import machine  # noqa: E402
from tests.helpers.fleet_sim import FleetSim, fleet_broker  # noqa: E402

STATUS_LIMIT_S = 2.0
GATE = ["--canary", "20", "--step-percent", "20", "--max-failed-percent", "10"]


def timed_cli(*args: str) -> tuple[subprocess.CompletedProcess[str], float, float]:
    """Run `edge-resnet ARGS`: (the process, wall seconds, CPU seconds of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "edge_resnet", *args], capture_output=True, text=True, cwd=REPO,
                       timeout=600)  # fmt: skip
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return p, wall, cpu


def bench_status(workdir: Path, n: int, repeats: int) -> bool:
    broker = fleet_broker(workdir / "status-broker")
    sim = FleetSim(broker.port, n).start()
    try:
        sim.seed_jobs("v2-0123456789abcdef", 2)
        print(f"fleet status: {n} devices, {4 * n} retained documents (presence, job, state, availability)")
        ok = True
        for flag in ([], ["--json"]):
            walls, cpus = [], []
            for _ in range(repeats):
                p, wall, cpu = timed_cli("fleet", "status", "--broker", broker.url, *flag)
                rows = (len(json.loads(p.stdout)["devices"]) if flag else len(p.stdout.splitlines()) - 2)
                if p.returncode != 0 or rows != n:
                    print(f"  FAILED: exit {p.returncode}, {rows} rows: {p.stderr.strip()}")
                    return False
                walls.append(wall)
                cpus.append(cpu)
            worst = max(walls)
            ok &= worst < STATUS_LIMIT_S
            print(f"  status {' '.join(flag) or '(table)':8s} {n} rows: wall median {statistics.median(walls):.2f} s, "
                  f"max {worst:.2f} s (limit {STATUS_LIMIT_S:g} s: {'ok' if worst < STATUS_LIMIT_S else 'OVER'}); "
                  f"CPU median {statistics.median(cpus):.2f} s over {repeats} runs")
        return ok
    finally:
        sim.stop()
        broker.stop()


def bench_rollout(workdir: Path, n: int) -> bool:
    broker = fleet_broker(workdir / "rollout-broker")
    sim = FleetSim(broker.port, n, bad_versions={3}).start()
    model = workdir / "model.tflite"
    model.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(1000))
    ok = True
    try:
        for version, expect in ((2, "done"), (3, "stopped")):
            p, wall, cpu = timed_cli("fleet", "rollout", str(model), "--group", "cams", "--version", str(version),
                                     "--broker", broker.url, "--json", *GATE)  # fmt: skip
            result = json.loads(p.stdout)
            waves = len(result["waves"])
            ran = len(sim.ran.get(version, ()))
            canary = {d["device"] for d in result["waves"][0]["devices"]}
            print(f"rollout version {version} ({'bad' if version in sim.bad_versions else 'good'}) to {n} devices "
                  f"({len(sim.failing)} failing): exit {p.returncode}, {waves} waves, {result['applied']} applied, "
                  f"{result['failed']} failed ({result['failed_percent']:.1f}%), {len(result['not_sent'])} not sent, "
                  f"{ran} devices ever ran it; wall {wall:.2f} s, CPU {cpu:.2f} s")
            if expect == "stopped":
                ok &= result["stopped"] and waves == 1 and sim.ran.get(version, set()) <= canary
            else:
                ok &= not result["stopped"] and result["sent"] == n
    finally:
        sim.stop()
        broker.stop()
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--status-devices", type=int, default=1000)
    ap.add_argument("--rollout-devices", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    m = machine()
    print(f"machine: {m['cpu']}, {m['cores']} cores, load {m['load_average_at_start']}, Python {m['python']}")
    with tempfile.TemporaryDirectory(prefix="fleet-scale-") as tmp:
        ok = bench_status(Path(tmp), args.status_devices, args.repeats)
        ok &= bench_rollout(Path(tmp), args.rollout_devices)
    print("all requirements met" if ok else "REQUIREMENT FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
