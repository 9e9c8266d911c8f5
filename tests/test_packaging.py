"""Must-show 4 of issue 15: the converter ships as `edge_resnet.convert`, never as a top-level
`convert` that could clash with anything else of that name in a user's environment. The source folder
stays `convert/` (the layout); `edge_resnet/convert` is a link to it, so the source tree and the
installed package import it by the same name."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONVERTER = sorted(p.name for p in (REPO / "convert").glob("*.py"))


@pytest.mark.e2e
def test_the_wheel_has_the_converter_under_edge_resnet_and_no_top_level_convert(tmp_path: Path) -> None:
    """What `pip install .` puts in site-packages is the wheel's contents. Built from a copy as a fresh
    clone has it: setuptools packs whatever a stale `build/lib` still holds."""
    src = tmp_path / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv*", ".cache", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"))
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
         str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = tmp_path.glob("edge_resnet-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"edge_resnet"}, sorted(tops)
    shipped = sorted(n.rsplit("/", 1)[1] for n in names if n.startswith("edge_resnet/convert/") and n.endswith(".py"))
    assert shipped == CONVERTER
    (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["edge_resnet"]


@pytest.mark.runtime
def test_the_installed_distribution_has_no_top_level_convert() -> None:
    """Every test environment: a plain install lists its files in RECORD; an editable one maps names
    to folders in setuptools' finder. Neither may name a top-level `convert`."""
    # the installed one, not the edge_resnet.egg-info a build leaves in the source tree (on sys.path here)
    (dist,) = [d for d in metadata.distributions(path=[sysconfig.get_paths()["purelib"]])
               if d.metadata["Name"] == "edge-resnet"]
    direct = dist.read_text("direct_url.json")
    editable = bool(direct and json.loads(direct).get("dir_info", {}).get("editable"))
    files = [str(f) for f in dist.files or []]
    if editable:
        (finder,) = [f for f in dist.files or [] if f.name.startswith("__editable__") and f.name.endswith("finder.py")]
        text = Path(str(finder.locate())).read_text()
        mapping = text.split("MAPPING", 1)[1].split("\n", 1)[0]
        assert "'edge_resnet'" in mapping and "'convert'" not in mapping, mapping
    else:
        assert not [f for f in files if f.startswith("convert/")], files
        ours = [f for f in files if f.startswith("edge_resnet/convert/") and f.endswith(".py")]
        assert sorted(f.rsplit("/", 1)[1] for f in ours) == CONVERTER
