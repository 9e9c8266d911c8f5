"""`edge-resnet convert --target imx500`: the Raspberry Pi AI Camera's half of `convert`.

Kept apart from commands/convert.py (the TFLite path) because it needs another environment: the
`[imx500]` extra (MCT, Sony's converter, PyTorch) on Python 3.10-3.12 with Java 17+. The memory check
runs first and needs only `onnx`, so a network that cannot fit is refused in one line within seconds
wherever the convert extra is installed.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..errors import DependencyError, ExitCode

EXTRA_FIX = 'install the imx500 extra on Python 3.10-3.12: pip install "edge-resnet[imx500]"'


def run(args: argparse.Namespace, fields: dict[str, Any]) -> int:
    """`fields`: what the job shares with a TFLite conversion, from the same flags (commands/convert.job_fields)."""
    try:
        from edge_resnet.convert.imx500 import Imx500Job, check_fits
        from edge_resnet.convert.imx500 import run as imx500_run
    except ImportError as e:
        raise DependencyError(f"IMX500 conversion needs {e.name or 'onnx'}; {EXTRA_FIX}") from None
    refused = [flag for flag, on in (("--edgetpu", args.edgetpu), ("--keep-float", args.keep_float)) if on]
    if refused:
        raise DependencyError(f"{', '.join(refused)} is for TFLite models; drop it with --target imx500")
    if args.model.exists():
        check_fits(args.model)  # DoesNotFit: one line with the figures, before images or MCT load
    job = Imx500Job(**fields)
    result = imx500_run(job)
    rep = result.report
    print(f"model:    {result.package} (on the Pi: imx500-package -i {result.package.name} -o DIR)")
    print(f"metadata: {result.metadata}")
    print(f"memory:   {rep.get('memory', {}).get('used', 'not reported')}")
    print(f"report:   {result.report_md}")
    summary = {k: rep[k] for k in ("evaluation", "gate") if k in rep}
    print(json.dumps(summary, sort_keys=True))
    return int(ExitCode.OK)
