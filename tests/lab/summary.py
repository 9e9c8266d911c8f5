"""Merge the lab's parts into `.cache/lab/summary.json`, print every check with its figure, and end
with the one closing line `lab: N passed, M failed` (exit 1 when anything failed or nothing ran).

    python3 tests/lab/summary.py EXPECTED_PART...
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

LAB = Path(os.environ.get("EDGE_RESNET_LAB_CACHE", Path(__file__).resolve().parents[2] / ".cache" / "lab"))
ROOTFS = ("arm64-bookworm", "arm64-trixie", "systemd", "amd64-trixie")


def main(parts: list[str]) -> int:
    results: dict[str, dict[str, object]] = {}
    for part in parts:
        f = LAB / "parts" / f"{part}.json"
        if f.exists():
            results.update(json.loads(f.read_text()))
        else:  # a part that never reported (its preparation broke) counts as a failed check
            results[f"lab part {part}"] = {"ok": False, "figure": f"no results: see {LAB / 'logs' / (part + '.log')}"}
    rootfs = {}
    for name in ROOTFS:
        p = LAB / "logs" / f"rootfs-{name}.path"
        rootfs[name] = p.read_text().strip() if p.exists() else ""
    host = json.loads((LAB / "host.json").read_text()) if (LAB / "host.json").exists() else {}
    run = {n: str(LAB / "run" / n) for n in (*ROOTFS, "arm64-systemd") if (LAB / "run" / n).exists()}
    venvs = {n: f"{run[n]}/root/er" for n in ("arm64-bookworm", "arm64-trixie") if n in run}
    summary = {
        "rootfs": rootfs,
        "run_rootfs": run,
        # the Pi-like venv that README.md's pi-install lines made in the run's copy of arm64-bookworm
        "venv_in_rootfs": venvs.get("arm64-bookworm", ""),
        "venvs_in_rootfs": venvs,
        "wheel": host.get("wheel", ""),
        "bundles": {k: v for k, v in host.items() if k.endswith("_bundle")},
        "results": results,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (LAB / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for name, r in results.items():
        fig = str(r["figure"]).splitlines()[0] if r["figure"] else ""
        print(f"  {'ok  ' if r['ok'] else 'FAIL'} {name}: {fig}"[:600])
    passed = sum(bool(r["ok"]) for r in results.values())
    failed = len(results) - passed
    print(f"== lab summary: {LAB / 'summary.json'}")
    print(f"lab: {passed} passed, {failed} failed")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
