"""IMX500 network packages (`network.rpk`) shaped as `imx500-package` writes them and picamera2 reads
them (`IMX500.__ni_from_network`), for tests: firmware blocks (b"9464", size u32 big-endian, 8 flag
bytes, 44 more header bytes, the payload, b"3695"; 32 more bytes after a device-locked block), then a
"newc" CPIO archive (as GNU `cpio --format=newc` writes it, padded to 512 bytes) holding `imx500_regs`,
`network_info.txt` and, optionally, `network_intrinsics`. The payload bytes are filler: only the
sensor reads them."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any


def network_info(width: int = 224, height: int = 224, fmt: str = "RGB", outputs: tuple[int, ...] = (1000,),
                 networks: int = 1) -> str:
    """network_info.txt with the keys a real package has (those of Raspberry Pi's mobilenet_v2.rpk)."""
    lines = ["version=020400", "networkID=000000", "networkType=0", "apParamSize=348", f"networkNum={networks}"]
    for ordinal in range(networks):
        lines += [f"networkOrdinal={ordinal}", f"inputTensorWidth={width}", f"inputTensorHeight={height}",
                  f"inputTensorFormat={fmt}"]
        lines += [f"inputTensorNorm_K{k}={v}" for k, v in (("00", "0x0400"), ("02", "0x0000"), ("03", "0x1800"),
                                                            ("11", "0x0400"), ("13", "0x1800"), ("20", "0x0000"),
                                                            ("22", "0x0400"), ("23", "0x1800"))]
        lines += ["yClip=0x007F0180", f"outputTensorNum={len(outputs)}"]
        lines += [f"outputTensorDimSize{i}={n}" for i, n in enumerate(outputs, start=1)]
        lines += [f"outputTensorPadding{i}=0" for i in range(1, len(outputs) + 1)]
    return "\n".join(lines) + "\n"


def firmware_block(index: int, count: int, payload_size: int, locked: bool = False) -> bytes:
    """One block: 60 header bytes (magic, size, flags: [0, count, 0, index, 0, 0, lock, first]), payload, footer."""
    flags = bytes([0, count, 0, index, 0, 0, 1 if locked else 0, 1 if index == 1 else 0])
    header = b"9464" + struct.pack(">I", payload_size) + flags + bytes(44)
    payload = bytes((index * 7 + i) & 0xFF for i in range(min(payload_size, 256))) * (payload_size // 256 + 1)
    return header + payload[:payload_size] + b"3695" + (bytes(32) if locked else b"")


def newc(members: list[tuple[str, bytes]], magic: bytes = b"070701", pad_to: int = 512) -> bytes:
    """A CPIO archive in the "newc" ASCII format (070701; 070702 is the same with checksums)."""
    out = bytearray()

    def align() -> None:
        out.extend(bytes(-len(out) % 4))

    for ino, (name, data) in enumerate([*members, ("TRAILER!!!", b"")], start=1):
        trailer = name == "TRAILER!!!"
        fields = [0 if trailer else ino, 0 if trailer else 0o100644, 1000, 1000, 1, 0,
                  len(data), 0, 0, 0, 0, len(name) + 1,
                  sum(data) & 0xFFFFFFFF if magic == b"070702" else 0]
        out += magic + b"".join(b"%08X" % f for f in fields) + name.encode() + b"\0"
        align()
        out += data
        align()
    out.extend(bytes(-len(out) % pad_to))
    return bytes(out)


def odc(members: list[tuple[str, bytes]]) -> bytes:
    """The old portable ASCII CPIO format (070707, octal fields, no padding)."""
    out = bytearray()
    for ino, (name, data) in enumerate([*members, ("TRAILER!!!", b"")], start=1):
        out += b"070707" + b"%06o%06o%06o%06o%06o%06o%06o%011o%06o%011o" % (
            0, ino, 0o100644, 1000, 1000, 1, 0, 0, len(name) + 1, len(data))
        out += name.encode() + b"\0" + data
    return bytes(out)


def write_rpk(path: Path, *, width: int = 224, height: int = 224, fmt: str = "RGB",
              outputs: tuple[int, ...] = (1000,), blocks: int = 2, block_size: int = 4096, locked: bool = False,
              info: str | None = None, intrinsics: dict[str, Any] | None = None, archive: str = "newc",
              members: list[tuple[str, bytes]] | None = None) -> Path:
    """A package with `blocks` firmware blocks of `block_size` payload bytes (the last one shorter, as in
    real packages) and an archive describing a `width`x`height` `fmt` input and `outputs`. `info` replaces
    network_info.txt; `members` replaces the archive's files."""
    body = b"".join(firmware_block(i, blocks, block_size if i < blocks else block_size // 2 + 12, locked)
                    for i in range(1, blocks + 1))
    files = members if members is not None else [
        ("imx500_regs", bytes(392)),
        ("network_info.txt", (info if info is not None else network_info(width, height, fmt, outputs)).encode()),
    ]
    if intrinsics is not None and members is None:
        files.append(("network_intrinsics", json.dumps(intrinsics).encode()))
    tail = {"newc": lambda: newc(files), "crc": lambda: newc(files, b"070702"), "odc": lambda: odc(files)}[archive]()
    path.write_bytes(body + tail)
    return path
