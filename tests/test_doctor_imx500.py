"""`edge-resnet doctor` for the Raspberry Pi AI Camera (issue 25): the network package reader
(edge_resnet/rpk.py) on packages shaped as imx500-package writes them, checked against picamera2's own
parser and Raspberry Pi's own packages where they are at hand; the IMX500 rows through the CLI with the
fake picamera2 (tests/helpers/fake_picamera2), and the hardware rows on fake /sys, /dev and firmware trees."""

from __future__ import annotations

import ast
import importlib.util
import io
import json
import os
import struct
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from edge_resnet import doctor_picamera2 as di
from edge_resnet.doctor import Result
from edge_resnet.errors import ExitCode, ModelError
from edge_resnet.rpk import read_rpk

from .conftest import run_cli
from .helpers.rpk import firmware_block, network_info, write_rpk

FAKE = Path(__file__).parent / "helpers" / "fake_picamera2"
PICAMERA2_MIRROR = Path("/work/.mirror/raspberrypi+picamera2/repo")  # a bare git copy of picamera2, if fetched
MODELS_MIRROR = Path("/work/.mirror/raspberrypi+imx500-models/repo")  # Raspberry Pi's imx500-models, if fetched
LABELS = ["tabby cat", "macaw", "hot dog", "owl"]


# -- the package reader ---------------------------------------------------------------------------


@pytest.mark.parametrize("archive", ["newc", "crc", "odc"])
def test_reads_the_input_and_outputs_of_a_package(tmp_path: Path, archive: str) -> None:
    rpk = write_rpk(tmp_path / "network.rpk", width=256, height=192, fmt="BGR", outputs=(1001,), blocks=3,
                    archive=archive, intrinsics={"task": "classification"})
    info = read_rpk(rpk)
    assert (info.width, info.height, info.input_format, info.output_sizes) == (256, 192, "BGR", (1001,))
    assert info.blocks == 3 and not info.locked and info.networks == 1
    assert info.intrinsics == {"task": "classification"}
    assert info.describe().startswith("256x192 BGR input, 1001 output values; 3 firmware block(s)")


def test_a_device_locked_package_has_32_more_bytes_after_each_block(tmp_path: Path) -> None:
    info = read_rpk(write_rpk(tmp_path / "network.rpk", locked=True, blocks=2))
    assert info.locked and info.blocks == 2 and (info.width, info.height) == (224, 224)
    assert "locked to one sensor" in info.describe()


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        ("not a package", "not a network package"),
        ("no footer", "has no footer 3695"),
        ("blocks only", "no archive"),
        ("zip instead of cpio", "not an ASCII CPIO archive"),
        ("cut in the archive", "cut short"),
        ("no network_info.txt", "no network_info.txt (imx500_regs)"),
        ("blank line", "line 4 ('') is not key=value"),
        ("networkNum too big", "networkNum=2 but describes 1"),
        ("no input size", "lacks inputTensorWidth"),
    ],
)
def test_a_package_picamera2_could_not_read_is_refused_with_the_fix(tmp_path: Path, damage: str, words: str) -> None:
    p = tmp_path / "network.rpk"
    good = write_rpk(tmp_path / "good.rpk").read_bytes()
    block = firmware_block(1, 1, 512)
    info = network_info()
    if damage == "not a package":
        p.write_bytes(b"PK\x03\x04 a zip, not a network")
    elif damage == "no footer":
        p.write_bytes(block[:-4] + b"XXXX" + good[len(block):])
    elif damage == "blocks only":
        p.write_bytes(block)
    elif damage == "zip instead of cpio":
        p.write_bytes(block + b"PK\x03\x04" + bytes(100))
    elif damage == "cut in the archive":
        p.write_bytes(good[: len(good) - 900])
    elif damage == "no network_info.txt":
        write_rpk(p, members=[("imx500_regs", bytes(392))])
    elif damage == "blank line":
        write_rpk(p, info=info.replace("networkType=0\n", "networkType=0\n\n"))
    elif damage == "networkNum too big":
        write_rpk(p, info=info.replace("networkNum=1", "networkNum=2"))
    elif damage == "no input size":
        write_rpk(p, info=info.replace("inputTensorWidth=224\n", ""))
    with pytest.raises(ModelError) as e:
        read_rpk(p)
    assert words in str(e.value), e.value
    if damage != "not a package":
        assert "imx500-package -i <name>_imx500.zip -o DIR" in str(e.value)


def _picamera2_imx500_source() -> str:
    """picamera2's devices/imx500/imx500.py: from an installed picamera2 (a Pi), else a fetched copy."""
    spec = importlib.util.find_spec("picamera2")
    if spec is not None and spec.submodule_search_locations and "fake_picamera2" not in str(spec.origin):
        f = Path(next(iter(spec.submodule_search_locations))) / "devices" / "imx500" / "imx500.py"
        if f.is_file():
            return f.read_text()
    if PICAMERA2_MIRROR.is_dir():
        return subprocess.run(["git", "-C", str(PICAMERA2_MIRROR), "show", "HEAD:picamera2/devices/imx500/imx500.py"],
                              capture_output=True, text=True, check=True).stdout
    pytest.skip("picamera2's source is not here (neither installed nor a copy under /work/.mirror)")


def picamera2_reader() -> Any:
    """picamera2's own `IMX500.__ni_from_network` (and its `config`), compiled from its source at test time
    into a class without the camera parts, with libarchive's fd_reader as picamera2 imports it."""
    fd_reader = pytest.importorskip("libarchive.read", reason="libarchive-c is not installed").fd_reader
    src = _picamera2_imx500_source()
    cls = next(n for n in ast.parse(src).body if isinstance(n, ast.ClassDef) and n.name == "IMX500")
    lines = src.splitlines(keepends=True)
    methods = [textwrap.dedent("".join(lines[(n.decorator_list[0] if n.decorator_list else n).lineno - 1:n.end_lineno]))
               for n in cls.body if isinstance(n, ast.FunctionDef) and n.name in ("__ni_from_network", "config")]
    assert len(methods) == 2, "picamera2's IMX500 no longer has __ni_from_network and config"
    body = "def __init__(self):\n    self.__cfg = {'input_tensor': {}}\n\n" + "\n\n".join(methods)
    code = "class IMX500:\n" + textwrap.indent(body, "    ")
    names: dict[str, Any] = {}
    exec(compile(code, "picamera2/devices/imx500/imx500.py (IMX500.__ni_from_network)", "exec"),
         {"os": os, "io": io, "json": json, "struct": struct, "fd_reader": fd_reader, "property": property,
          "NetworkIntrinsics": lambda d: d}, names)
    return names["IMX500"]


@pytest.mark.parametrize("kind", ["newc", "locked", "crc", "odc"])
def test_picamera2s_own_parser_reads_our_test_packages_as_we_do(tmp_path: Path, kind: str) -> None:
    """The packages this file's tests build are what picamera2 reads: its parser (run from its source)
    and ours agree on the input, and picamera2 finds the archive where we do."""
    imx500 = picamera2_reader()
    rpk = write_rpk(tmp_path / "network.rpk", width=320, height=240, fmt="RGB", outputs=(10,), blocks=3,
                    locked=kind == "locked", archive="newc" if kind == "locked" else kind,
                    intrinsics={"task": "classification", "inference_rate": 30.0})
    cam = imx500()
    cam._IMX500__ni_from_network(str(rpk))
    cfg = cam.config
    ours = read_rpk(rpk)
    assert cfg["input_tensor_size"] == (ours.width, ours.height) == (320, 240)
    assert cfg["input_tensor"]["input_format"] == ours.input_format == "RGB"
    assert cfg["network_info"]["networkNum"] == ours.networks == 1
    assert cfg["network_info"]["network"][0]["outputTensorDimSize1"] == "10"
    assert cfg["intrinsics"] == ours.intrinsics


def test_picamera2s_own_parser_fails_where_ours_refuses(tmp_path: Path) -> None:
    """A blank line in network_info.txt: picamera2 raises (key, value = split), so doctor must not say ok."""
    imx500 = picamera2_reader()
    rpk = write_rpk(tmp_path / "network.rpk", info=network_info().replace("networkType=0\n", "networkType=0\n\n"))
    with pytest.raises(ValueError):
        imx500()._IMX500__ni_from_network(str(rpk))
    with pytest.raises(ModelError):
        read_rpk(rpk)


def test_raspberry_pis_own_packages_read_as_picamera2_reads_them() -> None:
    """The .rpk files of Raspberry Pi's imx500-models (what imx500-package makes), when a copy is here."""
    if not MODELS_MIRROR.is_dir():
        pytest.skip("no copy of raspberrypi/imx500-models under /work/.mirror")
    tree = subprocess.run(["git", "-C", str(MODELS_MIRROR), "ls-tree", "-l", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.splitlines()
    wanted = {"imx500_network_mobilenet_v2.rpk": ((224, 224), (1000,)),
              "imx500_network_ssd_mobilenetv2_fpnlite_320x320_pp.rpk": ((320, 320), (400, 100, 100, 1))}
    seen = 0
    for line in tree:
        name = line.split("\t")[-1]
        if name not in wanted or line.split()[3] == "-":
            continue
        blob = subprocess.run(["git", "-C", str(MODELS_MIRROR), "show", f"HEAD:{name}"], capture_output=True,
                              check=True).stdout
        if not blob.startswith(b"9464"):
            continue  # absent from the copy (large files are left out)
        p = Path(os.environ.get("TMPDIR", "/tmp")) / f"edge-resnet-test-{os.getpid()}-{name}"
        p.write_bytes(blob)
        try:
            info = read_rpk(p)
        finally:
            p.unlink()
        assert ((info.width, info.height), info.output_sizes) == wanted[name]
        assert info.input_format == "RGB" and info.blocks >= 2
        seen += 1
    if not seen:
        pytest.skip("the copy has none of the packages this test knows")


# -- hardware rows on fake trees ------------------------------------------------------------------


def test_firmware_row(tmp_path: Path) -> None:
    loader, main = tmp_path / "imx500_loader.fpk", tmp_path / "imx500_firmware.fpk"
    [row] = di.check_imx500_firmware((str(loader), str(main)))
    assert row.result is Result.FAIL and str(loader) in row.detail and "imx500-all" in row.fix
    loader.write_bytes(bytes(20_000))
    main.write_bytes(bytes(150_000))
    [row] = di.check_imx500_firmware((str(loader), str(main)))
    assert row.result is Result.OK and row.detail == "imx500_loader.fpk (20 kB), imx500_firmware.fpk (150 kB)"


def test_sensor_row_finds_the_imx500_subdev_as_picamera2_does(tmp_path: Path) -> None:
    sys_root, dev = tmp_path / "sys", tmp_path / "dev"
    dev.mkdir()
    [row] = di.check_imx500_sensor(str(sys_root), str(dev))
    assert row.result is Result.FAIL and "dtoverlay=imx500" in row.fix and "ribbon cable" in row.fix
    for i, module in ((0, "rp1_cfe"), (3, "imx500")):  # the CSI receiver's node, then the sensor's
        d = sys_root / "class" / "video4linux" / f"v4l-subdev{i}" / "device" / "driver"
        d.mkdir(parents=True)
        (d / "module").symlink_to(f"../../../../module/{module}")
        (dev / f"v4l-subdev{i}").touch()
    assert di.find_imx500_subdev(str(sys_root)) == "v4l-subdev3"
    [row] = di.check_imx500_sensor(str(sys_root), str(dev))
    assert row.result is Result.OK and row.detail.startswith(f"{dev}/v4l-subdev3")


def test_camera_row_needs_an_imx500_in_libcamera_list() -> None:
    [row] = di.check_imx500_camera([{"Model": "imx708", "Num": 0, "Id": "/base/.../imx708@1a"}])
    assert row.result is Result.FAIL and "cameras: imx708" in row.detail and "rpicam-hello --list-cameras" in row.fix
    [row] = di.check_imx500_camera([{"Model": "imx708", "Num": 0}, {"Model": "imx500", "Num": 1, "Id": "i2c@88000"}])
    assert row.result is Result.OK and row.detail == "camera 1: imx500 (i2c@88000)"


# -- through the CLI, with the fake picamera2 ---------------------------------------------------------


def _metadata(path: Path, hw: tuple[int, int] = (224, 224), outputs: int = 5) -> Path:
    """<name>_imx500.json as `convert --target imx500` writes it (the keys the device reads, and the input)."""
    path.write_text(json.dumps({
        "format": "edge-resnet-imx500", "version": 2, "labels": LABELS, "label_offset": 1,
        "output_kind": "logits", "num_outputs": outputs,
        "preprocess": {"mean": [127.5] * 3, "std": [127.5] * 3, "channel_order": "RGB", "crop_fraction": 0.875,
                       "interpolation": "area_fast", "preset": "inception"},
        "input": {"shape": [1, 3, *hw], "layout": "NCHW"},
        "package": "mobilenet_v2_imx500.zip", "package_sha256": "0" * 64,
    }))
    return path


def _doctor(tmp_path: Path, network: Path, model: Path, script: dict[str, Any] | None = None,
            fake: bool = True) -> tuple[int, dict[str, dict[str, str]]]:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'device_id = "aicam"\nstate_dir = "{tmp_path}"\n[model]\npath = "{model}"\n'
                   f'[source]\ntype = "picamera2"\nmode = "imx500"\nnetwork = "{network}"\n')
    env = {}
    if fake:
        (tmp_path / "camera.json").write_text(json.dumps(script or {}))
        env = {"EDGE_RESNET_FAKE_IMX500": str(tmp_path / "camera.json"),
               "PYTHONPATH": os.pathsep.join([str(FAKE), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    r = run_cli("doctor", "--config", str(cfg), "--json", env=env, timeout=120)
    rows = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    print("\n" + "\n".join(f"{n:15} {c['result']:4}  {c['detail']}" + (f"\n{'':21}fix: {c['fix']}" if c["fix"] else "")
                           for n, c in rows.items() if n.startswith(("imx500", "picamera2", "model"))))
    return r.returncode, rows


def test_doctor_describes_the_ai_camera_the_network_and_its_model(tmp_path: Path) -> None:
    pytest.importorskip("cv2")
    rpk = write_rpk(tmp_path / "network.rpk", outputs=(5,), blocks=4)
    meta = _metadata(tmp_path / "mobilenet_v2_imx500.json")
    code, rows = _doctor(tmp_path, rpk, meta)
    assert rows["picamera2"]["result"] == "ok" and rows["picamera2"]["detail"] == "1 camera(s): imx500"
    assert rows["imx500 support"]["result"] == "ok"
    assert rows["imx500 camera"] == {"name": "imx500 camera", "result": "ok", "fix": "",
                                     "detail": "camera 0: imx500 (/base/axi/pcie@120000/rp1/i2c@88000/imx500@1a)"}
    net = rows["imx500 network"]
    assert net["result"] == "ok" and net["detail"].startswith(f"{rpk}: 224x224 RGB input, 5 output values; 4 firmware")
    model = rows["model"]  # Engine.load cannot load the metadata; the sensor's classifier can
    assert model["result"] == "ok", model
    assert model["detail"] == ("mobilenet_v2_imx500.json on the IMX500 sensor (Raspberry Pi AI Camera): "
                               "5 outputs, 5 labels")
    assert rows["imx500 model"]["result"] == "ok"
    assert rows["imx500 model"]["detail"] == "mobilenet_v2_imx500.json and network.rpk agree: 224x224 input, 5 outputs"
    assert rows["edgetpu"]["result"] == "skip" and "libedgetpu" not in rows  # no Edge TPU for the sensor's network
    if not all(os.path.isfile(f) for f in di.FIRMWARE):  # this machine is no Pi: its firmware and node fail
        assert rows["imx500 firmware"]["result"] == "FAIL" and code == ExitCode.PROBLEMS
        assert "sudo apt install imx500-all" in rows["imx500 firmware"]["fix"]


def test_doctor_fails_a_missing_network_with_the_packaging_command(tmp_path: Path) -> None:
    pytest.importorskip("cv2")
    meta = _metadata(tmp_path / "mobilenet_v2_imx500.json")
    code, rows = _doctor(tmp_path, tmp_path / "net" / "network.rpk", meta)
    assert code == ExitCode.PROBLEMS
    net = rows["imx500 network"]
    assert net["result"] == "FAIL" and net["detail"] == f"{tmp_path}/net/network.rpk not found"
    assert "imx500-package -i <name>_imx500.zip -o DIR" in net["fix"]
    assert "imx500 model" not in rows  # nothing to compare with: the network row says why


def test_doctor_fails_a_network_and_metadata_from_different_conversions(tmp_path: Path) -> None:
    pytest.importorskip("cv2")
    rpk = write_rpk(tmp_path / "network.rpk", width=320, height=320, outputs=(5,))
    meta = _metadata(tmp_path / "mobilenet_v2_imx500.json", hw=(224, 224))
    code, rows = _doctor(tmp_path, rpk, meta)
    row = rows["imx500 model"]
    assert code == ExitCode.PROBLEMS and row["result"] == "FAIL"
    assert row["detail"] == "mobilenet_v2_imx500.json describes a 224x224 input, network.rpk takes 320x320"
    assert row["fix"].startswith("convert and package again from the same conversion")
    write_rpk(rpk, outputs=(1000,))  # the right size, the wrong number of classes
    _, rows = _doctor(tmp_path, rpk, meta)
    assert rows["imx500 model"]["detail"] == "mobilenet_v2_imx500.json describes 5 outputs, network.rpk gives 1000"


def test_doctor_fails_a_damaged_network_and_a_camera_that_is_no_imx500(tmp_path: Path) -> None:
    pytest.importorskip("cv2")
    rpk = tmp_path / "network.rpk"
    rpk.write_bytes(write_rpk(tmp_path / "good.rpk").read_bytes()[:-2000])  # a copy cut short
    meta = _metadata(tmp_path / "mobilenet_v2_imx500.json")
    _, rows = _doctor(tmp_path, rpk, meta, {"cameras": [{"Model": "imx708", "Num": 0, "Id": "i2c@80000/imx708@1a"}]})
    assert rows["imx500 network"]["result"] == "FAIL" and "cut short" in rows["imx500 network"]["detail"]
    assert "imx500-package" in rows["imx500 network"]["fix"]
    cam = rows["imx500 camera"]
    assert cam["result"] == "FAIL" and cam["detail"] == "libcamera lists no imx500 (cameras: imx708)"


def test_doctor_without_picamera2s_imx500_support_names_the_packages(tmp_path: Path) -> None:
    pytest.importorskip("cv2")
    if importlib.util.find_spec("picamera2") is not None:
        pytest.skip("picamera2 is installed here")
    rpk = write_rpk(tmp_path / "network.rpk", outputs=(5,))
    _, rows = _doctor(tmp_path, rpk, _metadata(tmp_path / "mobilenet_v2_imx500.json"), fake=False)
    assert rows["picamera2"]["result"] == "FAIL"
    assert rows["imx500 support"]["result"] == "FAIL"
    assert rows["imx500 support"]["fix"] == "sudo apt install imx500-all python3-picamera2"
    assert rows["imx500 network"]["result"] == "ok"  # the file is checked all the same
