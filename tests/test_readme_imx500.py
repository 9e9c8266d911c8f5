"""README.md's IMX500 lines hold together, in the fast run (issue 25, must-show 4).

The slow path pastes them for real (tests/imx500/readme.sh: a clean checkout, the README's pip line
into a fresh python3.12 venv, the conversion offline; ~4 minutes and 6.5 GB in smoke mode). This checks
in a second what that script relies on: the block is the apt line, the venv-and-pip line and the
convert line, in that order; the Python it names is one the [imx500] extra's markers accept; the
convert line's flags are `edge-resnet convert`'s own and its files are in the test data.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

from edge_resnet.cli import build_parser
from tests.conftest import REPO
from tests.helpers.readme_blocks import section, sh_lines

HEADING = "### Raspberry Pi AI Camera (IMX500)"


def _lines() -> list[str]:
    return sh_lines(section((REPO / "README.md").read_text(encoding="utf-8"), HEADING))


def test_the_imx500_block_is_apt_then_venv_then_convert() -> None:
    apt, venv_pip, convert = _lines()  # tests/imx500/readme.sh runs them in this order
    assert re.fullmatch(r"sudo apt install openjdk-(1[7-9]|2\d)-jre-headless", apt), apt
    m = re.match(r'python3\.(\d+) -m venv (\S+) && \2/bin/pip install -e "\.\[imx500\]"(\s+#.*)?$', venv_pip)
    assert m, venv_pip
    # the interpreter named must be one every [imx500] requirement's marker accepts
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["imx500"]
    for req in extra:
        bounds = re.search(r"python_version >= '3\.(\d+)' and python_version < '3\.(\d+)'", req)
        assert bounds, req
        assert int(bounds[1]) <= int(m[1]) < int(bounds[2]), (req, venv_pip)
    assert convert.startswith(f"{m[2]}/bin/edge-resnet convert "), convert


def test_the_convert_line_parses_and_names_the_test_data(data_dir: Path) -> None:
    argv = shlex.split(_lines()[-1], comments=True)[1:]
    args = build_parser(argv).parse_args(argv)  # an unknown flag or bad value exits here
    assert args.target == "imx500"
    # the README's paths are relative to a checkout beside ../shared/data (readme.sh makes that layout)
    for p in (args.model, args.calib, args.labels):
        assert str(p).startswith("../shared/data/"), p
        assert (data_dir / str(p).removeprefix("../shared/data/")).exists(), p
