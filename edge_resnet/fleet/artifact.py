"""The model a rollout announces: its URL as the devices will fetch it, and the digest, size and version
they check it against. Read once by the controller (a local file, or an http(s) URL streamed through
the hash) unless all three are given, so a typo in a digest fails here and not on a thousand devices."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..errors import ModelError
from .controller import Model

CHUNK = 1 << 20
TIMEOUT_S = 30.0
SHA256_HEX = frozenset("0123456789abcdef")


def device_url(model_url: str) -> str:
    """The URL put in the install command: http(s) and file:// as given, a path made absolute."""
    if urlsplit(model_url).scheme in ("http", "https", "file"):
        return model_url
    return str(Path(model_url).expanduser().resolve())


def local_path(url: str) -> Path | None:
    """The file behind a path or file:// URL; None for http(s)."""
    u = urlsplit(url)
    if u.scheme == "file":
        return Path(unquote(u.path))
    return None if u.scheme in ("http", "https") else Path(url)


def _hash_file(path: Path) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _fetch(url: str, dest: Path) -> None:
    req = urllib.request.Request(url, headers={"User-Agent": "edge-resnet fleet"})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp, open(dest, "wb") as f:
            shutil.copyfileobj(resp, f, CHUNK)
    except (urllib.error.URLError, OSError) as e:
        raise ModelError(f"cannot fetch {url} ({getattr(e, 'reason', e)}); check the URL, or give --sha256, "
                         "--size and --version to announce it without fetching") from None


def manifest_version(path: Path) -> int | None:
    """The version the bundle's signature manifest names (read, not verified: the devices verify); None
    for an unsigned bundle. ModelError for a file that is no TFLite model or whose signature is unreadable:
    every device would refuse it."""
    try:
        from ..bundle import read_parts
        from .manifest import Envelope, Manifest
    except ImportError:  # no `cryptography` here: the version must come from --version
        return None
    signature = read_parts(path).signature
    if signature is None:
        return None
    try:
        return Manifest.from_bytes(Envelope.from_bytes(signature).manifest).version
    except ValueError as e:
        raise ModelError(f"{path}: its signature.json is unreadable ({e}); sign the bundle again") from None


def describe(model_url: str, sha256: str | None = None, size: int | None = None,
             version: int | None = None) -> Model:
    """The Model to announce. Given all of sha256, size and version, nothing is read (the URL may be
    reachable from the devices only); otherwise the file is read once and what was given must match."""
    url = device_url(model_url)
    if sha256 is not None and (len(sha256) != 64 or not set(sha256.lower()) <= SHA256_HEX):
        raise ModelError(f"--sha256 {sha256!r} is not 64 hex digits; give the model's SHA-256 (sha256sum FILE)")
    sha256 = sha256.lower() if sha256 else None
    if version is not None and version < 1:
        raise ModelError(f"--version {version}: versions start at 1")
    if size is not None and size < 1:
        raise ModelError(f"--size {size}: give the bundle's size in bytes")
    if sha256 is not None and size is not None and version is not None:
        return Model(url, sha256, size, version)
    with tempfile.TemporaryDirectory(prefix="edge-resnet-rollout-") as tmp:
        path = local_path(url)
        if path is None:
            path = Path(tmp) / "model.tflite"
            _fetch(url, path)
        elif not path.is_file():
            raise ModelError(f"{path} does not exist here; give an existing bundle, or --sha256, --size and "
                             "--version when the path exists on the devices only")
        digest, got_size = _hash_file(path)
        read_version = manifest_version(path)
    if sha256 is not None and sha256 != digest:
        raise ModelError(f"--sha256 {sha256[:16]}... does not match {model_url} ({digest[:16]}...); fix the "
                         "digest or leave it out")
    if size is not None and size != got_size:
        raise ModelError(f"--size {size} does not match {model_url} ({got_size} bytes); fix it or leave it out")
    if version is not None and read_version is not None and version != read_version:
        raise ModelError(f"--version {version} but the bundle's signature says version {read_version}; "
                         "leave --version out or sign the bundle again")
    version = version if version is not None else read_version
    if version is None:
        raise ModelError(f"{model_url} carries no signed version; give --version N (or sign it: edge-resnet "
                         "sign MODEL --key KEY --version N)")
    if got_size == 0:
        raise ModelError(f"{model_url} is empty; give the model bundle")
    return Model(url, digest, got_size, version)

