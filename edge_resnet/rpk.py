"""What an IMX500 network package (`network.rpk`, written by `imx500-package`) says about its network,
read on the device without the sensor: the input it takes (size, pixel format) and the outputs it
gives. `doctor` uses it to find a wrong, damaged or mismatched file before the daemon spends minutes
uploading it to the sensor.

The layout is walked exactly as picamera2 walks it (`IMX500.__ni_from_network` in
picamera2/devices/imx500/imx500.py), so whatever this accepts, picamera2 reads the same way:
- firmware blocks, each b"9464", its payload size (u32, big-endian), 8 flag bytes and 44 more header
  bytes, the payload, then the footer b"3695": 64 + size bytes in all; when bit 0 of flag byte 6 is
  set (a package locked to one sensor, i.e. encrypted) 32 more bytes follow;
- where the next block does not begin with b"9464", a CPIO archive begins. picamera2 hands it to
  libarchive, which takes any format it recognises; `imx500-package` writes the "newc" ASCII format
  (magic 070701; Raspberry Pi's own tools append to it with `cpio --format=newc`), read here along
  with its CRC twin (070702) and the old portable ASCII format (070707). Offsets in the archive count
  from its first byte, as libarchive, reading from that file offset, counts them.
- the archive holds `imx500_regs`, `network_info.txt` and, in Raspberry Pi's packages,
  `network_intrinsics` (JSON). network_info.txt is `key=value` lines: networkNum, then for each
  network a `networkOrdinal=N` line and its keys (inputTensorWidth, inputTensorHeight,
  inputTensorFormat, inputTensorNorm_K.., outputTensorNum, outputTensorDimSizeK = the K-th output's
  number of values, ...). picamera2 splits every line at "=" and fails on a line that is not exactly
  `key=value`, so this does too.
"""

from __future__ import annotations

import io
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelError

BLOCK_MAGIC = b"9464"
FOOTER_MAGIC = b"3695"
BLOCK_OVERHEAD = 64  # 60 header bytes before the payload, 4 footer bytes after it
LOCKED_EXTRA = 32  # after the footer of a block whose flag byte 6 has bit 0 set
NEWC, CRC, ODC = b"070701", b"070702", b"070707"
TRAILER = "TRAILER!!!"
MAX_BYTES = 64 * 1024 * 1024  # the sensor holds 8 MB of network: a larger file is not a network
# picamera2 reads these of network 0 with int(value, 0): a package without them fails there
NORM_KEYS = tuple(f"inputTensorNorm_K{k}" for k in ("03", "13", "23", "00", "22", "02", "20", "11"))
REPACKAGE = "package it again on the Pi: `imx500-package -i <name>_imx500.zip -o DIR`"


@dataclass(frozen=True)
class NetworkInfo:
    """Network 0 of a package, as picamera2 will configure the sensor for it."""

    path: Path
    width: int
    height: int
    input_format: str  # RGB, BGR, Y or BayerRGB
    output_sizes: tuple[int, ...]  # values per output tensor (outputTensorDimSizeK)
    networks: int  # networkNum
    blocks: int  # firmware blocks before the archive
    locked: bool  # a block carries the device-lock flag (an encrypted package for one sensor)
    size_bytes: int
    intrinsics: dict[str, Any] | None  # network_intrinsics, when the package has it

    def describe(self) -> str:
        outs = " + ".join(str(n) for n in self.output_sizes) or "no"
        lock = ", locked to one sensor" if self.locked else ""
        return (f"{self.width}x{self.height} {self.input_format} input, {outs} output values; "
                f"{self.blocks} firmware block(s), {self.size_bytes / 1e6:.1f} MB{lock}")


def archive_offset(data: bytes | memoryview) -> tuple[int, int, bool]:
    """(where the CPIO archive starts, firmware blocks before it, whether one is device-locked), by
    picamera2's walk. A block without its footer is damage (picamera2 raises there too)."""
    fw = memoryview(data)
    offset = blocks = 0
    locked = False
    while True:
        if len(fw) - offset < 8:
            raise ModelError("the file ends after its firmware blocks, with no archive (network_info.txt) "
                             f"behind them: it is cut short; {REPACKAGE}")
        magic, size = struct.unpack_from(">4sI", fw, offset)
        if magic != BLOCK_MAGIC:
            break
        footer = offset + size + BLOCK_OVERHEAD - 4
        if bytes(fw[footer:footer + 4]) != FOOTER_MAGIC:
            raise ModelError(f"firmware block {blocks + 1} (at byte {offset}, {size} bytes) has no footer "
                             f"{FOOTER_MAGIC.decode()}: the file is damaged or cut short; {REPACKAGE}")
        flags = struct.unpack_from("8B", fw, offset + 8)
        offset += size + BLOCK_OVERHEAD
        blocks += 1
        if flags[6] & 0x01:
            offset += LOCKED_EXTRA
            locked = True
    if blocks == 0:
        raise ModelError(f"no IMX500 firmware block (the file does not begin with {BLOCK_MAGIC.decode()}): "
                         f"this is not a network package; {REPACKAGE} and set [source] network to DIR/network.rpk")
    return offset, blocks, locked


def cpio_members(data: bytes | memoryview, start: int) -> Iterator[tuple[str, bytes]]:
    """(name, contents) of each file in the CPIO archive at `start`, up to its trailer."""
    buf = memoryview(data)
    pos = start
    while True:
        magic = bytes(buf[pos:pos + 6])
        if magic in (NEWC, CRC):
            header = _fields(buf, pos + 6, 13, 8, 16, magic)
            size, namesize = header[6], header[11]
            name_at = pos + 110
            body = start + _align4(name_at + namesize - start)
            following = start + _align4(body + size - start)
        elif magic == ODC:
            header = _fields(buf, pos + 6, 7, 6, 8, magic, last=(11, 6, 11))
            namesize, size = header[-2], header[-1]
            name_at = pos + 76
            body = name_at + namesize
            following = body + size
        else:
            what = "nothing" if not magic else repr(magic)
            raise ModelError(f"the archive after the firmware blocks is not an ASCII CPIO archive (found {what} "
                             f"at byte {pos}); {REPACKAGE}")
        if body + size > len(buf):
            raise ModelError(f"the archive is cut short (a file at byte {pos} runs past the end); {REPACKAGE}")
        name = bytes(buf[name_at:name_at + namesize]).rstrip(b"\0").decode("utf-8", "replace")
        if name == TRAILER:
            return
        yield name, bytes(buf[body:body + size])
        pos = following


def _align4(n: int) -> int:
    return (n + 3) & ~3


def _fields(buf: memoryview, at: int, count: int, width: int, base: int, magic: bytes,
            last: tuple[int, ...] = ()) -> list[int]:
    """`count` fields of `width` digits in `base`, then fields of the widths in `last`."""
    widths = [width] * count + list(last)
    out = []
    for w in widths:
        text = bytes(buf[at:at + w])
        try:
            out.append(int(text, base))
        except ValueError:
            raise ModelError(f"the archive's {magic.decode()} header is damaged ({text!r} at byte {at}); "
                             f"{REPACKAGE}") from None
        at += w
    return out


def parse_network_info(text: str) -> dict[str, Any]:
    """network_info.txt -> {"networkNum": n, "network": {ordinal: {key: value}}, ...}, as picamera2
    builds it (global keys before the first networkOrdinal, one dict per network after)."""
    out: dict[str, Any] = {}
    for n, line in enumerate(io.StringIO(text), start=1):  # picamera2's line splitting: at "\n" only
        parts = line.strip().split("=")
        if len(parts) != 2:
            raise ModelError(f"network_info.txt line {n} ({line.strip()!r}) is not key=value, which picamera2 "
                             f"cannot read; {REPACKAGE}")
        key, value = parts
        if key in ("networkNum", "apParamSize"):
            out[key] = _int(key, value, 10)
    if "networkNum" not in out:
        raise ModelError(f"network_info.txt has no networkNum; {REPACKAGE}")
    networks: dict[int, dict[str, str]] = {}
    for section in text.split("networkOrdinal=")[1:]:
        buf = io.StringIO(section)
        ordinal = _int("networkOrdinal", buf.readline(), 10)
        props: dict[str, str] = {}
        for line in buf:  # every line is key=value: checked above
            key, value = line.strip().split("=")
            props[key] = value
        networks[ordinal] = props
    if len(networks) != out["networkNum"]:
        raise ModelError(f"network_info.txt says networkNum={out['networkNum']} but describes {len(networks)} "
                         f"network(s); picamera2 refuses that; {REPACKAGE}")
    out["network"] = networks
    return out


def _int(key: str, value: str, base: int) -> int:
    try:
        return int(value.strip(), base)
    except ValueError:
        raise ModelError(f"network_info.txt: {key}={value.strip()!r} is not a number; {REPACKAGE}") from None


def read_rpk(path: str | os.PathLike[str]) -> NetworkInfo:
    """Network 0 of the package at `path`. ModelError (with the fix) when picamera2 could not read it."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_BYTES:
            raise ModelError(f"{p} is {size / 1e6:.0f} MB, too big for an IMX500 network (the sensor holds 8 MB); "
                             f"{REPACKAGE}")
        data = p.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"{p} not found; {REPACKAGE} and set [source] network to DIR/network.rpk") from None
    except PermissionError:
        raise ModelError(f"{p} is not readable by this user; make it readable (sudo chmod 0644 {p})") from None
    except IsADirectoryError:
        raise ModelError(f"{p} is a folder; set [source] network to the network.rpk inside it") from None
    except OSError as e:
        raise ModelError(f"{p} cannot be read ({e.strerror or e}); copy it again") from None
    start, blocks, locked = archive_offset(data)
    members = dict(cpio_members(data, start))
    raw = members.get("network_info.txt")
    if raw is None:
        found = ", ".join(sorted(members)) or "no files"
        raise ModelError(f"{p.name}'s archive has no network_info.txt ({found}); {REPACKAGE}")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise ModelError(f"{p.name}: network_info.txt is not ASCII text; {REPACKAGE}") from None
    info = parse_network_info(text)
    net = info["network"].get(0)
    if net is None:
        raise ModelError(f"{p.name}: network_info.txt has no networkOrdinal=0; {REPACKAGE}")
    missing = [k for k in ("inputTensorWidth", "inputTensorHeight", "inputTensorFormat", *NORM_KEYS) if k not in net]
    if missing:
        raise ModelError(f"{p.name}: network_info.txt lacks {', '.join(missing)} for network 0; {REPACKAGE}")
    for key in NORM_KEYS:
        _int(key, net[key], 0)
    outputs = _int("outputTensorNum", net.get("outputTensorNum", "0"), 0)
    sizes = tuple(_int(f"outputTensorDimSize{k}", net.get(f"outputTensorDimSize{k}", "0"), 0)
                  for k in range(1, outputs + 1))
    intrinsics = None
    if "network_intrinsics" in members:
        try:
            loaded = json.loads(members["network_intrinsics"])
        except ValueError:
            raise ModelError(f"{p.name}: network_intrinsics is not JSON, and picamera2 reads it as JSON; "
                             f"{REPACKAGE}") from None
        intrinsics = loaded if isinstance(loaded, dict) else None
    return NetworkInfo(
        path=p,
        width=_int("inputTensorWidth", net["inputTensorWidth"], 10),
        height=_int("inputTensorHeight", net["inputTensorHeight"], 10),
        input_format=net["inputTensorFormat"],
        output_sizes=sizes,
        networks=int(info["networkNum"]),
        blocks=blocks,
        locked=locked,
        size_bytes=len(data),
        intrinsics=intrinsics,
    )
