"""Signing keys: Ed25519 through `cryptography` (wheels for aarch64 and armv7l), as PEM files.

A key's id is the first 16 hex digits of the SHA-256 of its raw 32-byte public key: it names the
files (`ID.key`, `ID.pub`), travels in every signature, and is what `[trust] retired` lists. The id
is always computed from the key itself, never read from a file name, so a renamed .pub is still
the key it is.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import ConfigError

KEY_SUFFIX = ".key"
PUB_SUFFIX = ".pub"


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate(out_dir: str | os.PathLike[str]) -> tuple[str, Path, Path]:
    """A new key pair in `out_dir`: (key id, the private `ID.key` with mode 0600, the public `ID.pub`).
    Never overwrites a file."""
    private = Ed25519PrivateKey.generate()
    kid = key_id(private.public_key())
    out = Path(out_dir)
    try:
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_path, pub_path = out / f"{kid}{KEY_SUFFIX}", out / f"{kid}{PUB_SUFFIX}"
        pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _write_new(key_path, pem, 0o600)
        pub = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        _write_new(pub_path, pub, 0o644)
    except FileExistsError as e:
        raise ConfigError(f"{e.filename} exists already; keygen never overwrites a key") from None
    except OSError as e:
        raise ConfigError(f"cannot write keys into {out} ({e.strerror}); pick a folder you can write") from None
    return kid, key_path, pub_path


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Created with `mode` from the start (a private key is never readable by others, not even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits off a .pub that others must read
        with os.fdopen(fd, "wb") as f:
            fd = -1
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    finally:
        if fd != -1:
            os.close(fd)


def load_private(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """A private key from `edge-resnet keygen`; one ConfigError naming the fix otherwise."""
    p = Path(path)
    data = _read(p, "private key")
    if os.name == "posix" and stat.S_IMODE(p.stat().st_mode) & 0o077:
        raise ConfigError(f"{p} is readable by other users; `chmod 600 {p}` (it signs what your devices run)")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(f"{p} is encrypted; give an unencrypted key from `edge-resnet keygen`") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"{p} is not a PEM private key; pass the ID.key that `edge-resnet keygen` wrote") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{p} is not an Ed25519 key; make one with `edge-resnet keygen --out DIR`")
    return key


def load_public(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """A public key (`ID.pub`) for the trust list; one ConfigError naming the fix otherwise."""
    p = Path(path)
    data = _read(p, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"{p} is not a PEM public key; list the ID.pub files `edge-resnet keygen` wrote") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{p} is not an Ed25519 public key; make keys with `edge-resnet keygen --out DIR`")
    return key


def _read(p: Path, what: str) -> bytes:
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} {p} not found; check the path (keygen writes ID.key and ID.pub)") from None
    except IsADirectoryError:
        suffix = KEY_SUFFIX if "private" in what else PUB_SUFFIX
        raise ConfigError(f"{what} {p} is a directory; give the ID{suffix} file in it") from None
    except OSError as e:
        raise ConfigError(f"{what} {p} cannot be read ({e.strerror}); check its permissions") from None
