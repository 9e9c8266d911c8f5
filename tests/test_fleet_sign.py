"""Signed bundles (issue 23, part 1): keygen, sign and verify through the CLI, and `check_model`, the
one decision the daemon and the install job call. Real bundles of the published MobileNets; every
refusal is one line with its reason word, on a file changed the way an attacker or a bad copy would."""

from __future__ import annotations

import hashlib
import json
import re
import stat
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge_resnet.bundle import SIGNATURE_NAME, BundleMeta, read_model, read_parts, write_bundle, write_members
from edge_resnet.classify import read_labels
from edge_resnet.errors import ConfigError, ModelError
from edge_resnet.fleet.keys import generate, key_id, load_private, load_public
from edge_resnet.fleet.manifest import Envelope, sign_model
from edge_resnet.fleet.trust import ModelRefused, Refusal, TrustPolicy, check_model, load_policy
from edge_resnet.prepspec import PRESETS
from edge_resnet.trustconfig import TrustConfig, trust_from_file

from .conftest import run_cli

pytestmark = pytest.mark.runtime  # the device verifies: every device environment runs these

Keys = dict[str, tuple[Path, Path]]  # name -> (ID.key, ID.pub)
TOMORROW = (datetime.now(UTC) + timedelta(days=1)).date()


def make_bundle(models_dir: Path, out: Path, name: str = "mobilenet_v2_1.0_224_quant.tflite") -> Path:
    meta = BundleMeta(
        preprocess=PRESETS["inception"],
        labels=read_labels(models_dir / "imagenet_labels_1001.txt"),
        label_offset=1,
        output_kind="probabilities",
    )
    return write_bundle((models_dir / name).read_bytes(), meta, out)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    """Three key pairs: `old` and `new` (both trusted in rotation), `stranger` (trusted nowhere)."""
    d = tmp_path_factory.mktemp("keys")
    return {name: generate(d / name)[1:] for name in ("old", "new", "stranger")}


@pytest.fixture(scope="module")
def unsigned(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(models_dir, tmp_path_factory.mktemp("unsigned") / "mnv2.tflite")


@pytest.fixture()
def signed(unsigned: Path, keys: Keys, tmp_path: Path) -> Path:
    """The MobileNet v2 bundle signed with `new`: version 5, cpu, valid through tomorrow."""
    p = tmp_path / "mnv2.tflite"
    p.write_bytes(unsigned.read_bytes())
    sign_model(p, load_private(keys["new"][0]), 5, expires=TOMORROW)
    return p


def policy(keys: Keys, *names: str, retired: tuple[str, ...] = (), require: bool = True) -> TrustPolicy:
    return TrustPolicy.of([load_public(keys[n][1]) for n in names], retired, require)


def kid(keys: Keys, name: str) -> str:
    return key_id(load_public(keys[name][1]))


def rewrite(path: Path, out: Path, change: Callable[[dict[str, bytes]], object], flat: bytes | None = None) -> Path:
    """The bundle at `path` with its archive members (signature included) changed by `change`."""
    mf = read_model(path)
    members = dict(mf.members)
    if mf.signature is not None:
        members[SIGNATURE_NAME] = mf.signature
    change(members)
    return write_members(mf.flatbuffer if flat is None else flat, members, out)


def refused(model: Path, pol: TrustPolicy, **kw: object) -> ModelRefused:
    with pytest.raises(ModelRefused) as e:
        check_model(model, pol, **kw)  # type: ignore[arg-type]
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{model}: refused ({e.value.reason.value}): ")
    assert isinstance(e.value, ModelError)  # exit code 4
    return e.value


# -- keys ------------------------------------------------------------------------------------------


def test_keygen_writes_a_private_key_only_its_owner_reads_named_by_its_id(tmp_path: Path) -> None:
    r = run_cli("keygen", "--out", str(tmp_path / "k"))
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip().splitlines()) == 1
    (key,) = (tmp_path / "k").glob("*.key")
    pub = key.with_suffix(".pub")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and stat.S_IMODE(pub.stat().st_mode) == 0o644
    assert key.stem == key_id(load_public(pub)) == key_id(load_private(key).public_key())
    assert len(key.stem) == 16 and f"key {key.stem}:" in r.stdout


def test_a_private_key_others_can_read_is_refused(keys: Keys, tmp_path: Path) -> None:
    loose = tmp_path / "loose.key"
    loose.write_bytes(keys["old"][0].read_bytes())
    loose.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_private(loose)


# -- sign and verify: the happy paths ----------------------------------------------------------------


def test_sign_in_place_then_verify_through_the_cli(unsigned: Path, keys: Keys, tmp_path: Path) -> None:
    model = tmp_path / "m.tflite"
    model.write_bytes(unsigned.read_bytes())
    model.chmod(0o640)
    r = run_cli("sign", str(model), "--key", str(keys["new"][0]), "--version", "7", "--expires", "2999-12-31")
    assert r.returncode == 0, r.stderr
    line = f"{model}: signed by {kid(keys, 'new')}, version 7, target cpu, expires 2999-12-31"
    assert r.stdout.strip() == line
    assert stat.S_IMODE(model.stat().st_mode) == 0o640  # its mode kept
    assert [p.name for p in tmp_path.iterdir()] == ["m.tflite"]  # no temp file left
    r = run_cli("verify", str(model), "--trust", str(keys["old"][1]), str(keys["new"][1]))
    assert (r.returncode, r.stdout.strip(), r.stderr) == (0, line, "")
    # the model is the same model: same flatbuffer and metadata, and the signature is no associated file
    mf, before = read_model(model), read_model(unsigned)
    assert mf.flatbuffer == before.flatbuffer and mf.members == before.members
    assert mf.files == {} and mf.signature is not None


def test_a_signed_bundle_still_runs_where_nothing_checks_signatures(signed: Path, unsigned: Path) -> None:
    r = run_cli("info", str(signed))
    assert r.returncode == 0, r.stderr
    assert "1001 labels" in r.stdout
    # and a bundle derived from it (what `learn` does: flatbuffer, meta, files) carries no stale signature
    mf = read_model(signed)
    assert mf.meta is not None
    derived = read_model(write_bundle(mf.flatbuffer, mf.meta, signed.with_name("derived.tflite"), mf.files))
    assert derived.signature is None


def test_check_model_returns_the_manifest_from_a_path_or_a_loaded_model(signed: Path, keys: Keys) -> None:
    pol = policy(keys, "new")
    m = check_model(signed, pol, min_version=5, target="cpu")
    assert m is not None and (m.version, m.target, m.key_id, m.expires) == (5, "cpu", kid(keys, "new"), str(TOMORROW))
    mf = read_model(signed)
    assert m.model_sha256 == mf.sha256 and m.model_size == len(mf.flatbuffer)
    assert set(m.files) == {"edge_resnet.json", "labels.txt"}
    assert check_model(mf, pol, min_version=5, target="cpu") == m  # the daemon's way: nothing read again


def test_without_require_signature_unsigned_and_unknown_keys_run_trusted_keys_are_checked(
    signed: Path, unsigned: Path, mobilenet_quant: Path, keys: Keys, tmp_path: Path
) -> None:
    assert check_model(unsigned, TrustPolicy()) is None
    foreign = read_model(mobilenet_quant)  # a plain .tflite the daemon loaded: unsigned, never hashed again
    assert check_model(foreign, TrustPolicy()) is None
    with pytest.raises(ModelRefused) as e:
        check_model(foreign, policy(keys, "old"))
    assert e.value.reason is Refusal.UNSIGNED
    assert check_model(unsigned, policy(keys, "old", require=False)) is None
    assert check_model(signed, policy(keys, "stranger", require=False)) is None  # an unsigned copy would run
    edited = rewrite(signed, tmp_path / "e.tflite", lambda m: m.update({"labels.txt": b"cat\n" * 1001}))
    assert refused(edited, policy(keys, "new", require=False)).reason is Refusal.METADATA_CHANGED
    assert refused(signed, policy(keys, "old", retired=(kid(keys, "new"),), require=False)).reason is (
        Refusal.RETIRED_KEY
    )


def test_key_rotation_through_the_config(unsigned: Path, keys: Keys, tmp_path: Path) -> None:
    """Trust both keys, sign with the new one, retire the old one: old signatures stop, new ones run."""
    by_old, by_new = tmp_path / "by_old.tflite", tmp_path / "by_new.tflite"
    for path, name, version in ((by_old, "old", 1), (by_new, "new", 2)):
        path.write_bytes(unsigned.read_bytes())
        assert run_cli("sign", str(path), "--key", str(keys[name][0]), "--version", str(version)).returncode == 0
    cfg = tmp_path / "device.toml"

    def verify(model: Path, keys_toml: str, retired: str = "") -> tuple[int, str]:
        cfg.write_text(f'device_id = "cam1"\n[trust]\nkeys = {keys_toml}\nrequire_signature = true\n{retired}')
        r = run_cli("verify", str(model), "--config", str(cfg))
        out = (r.stdout + r.stderr).strip()
        assert len(out.splitlines()) == 1, out
        return r.returncode, out

    both = json.dumps([str(keys["old"][1]), str(keys["new"][1])])
    assert verify(by_old, both) == (0, f"{by_old}: signed by {kid(keys, 'old')}, version 1, target cpu, no expiry")
    assert verify(by_new, both)[0] == 0
    retire_old = f'retired = ["{kid(keys, "old")}"]\n'
    code, out = verify(by_old, both, retire_old)
    assert code == 4 and "refused (retired_key)" in out and kid(keys, "old") in out
    assert verify(by_new, both, retire_old)[0] == 0
    code, out = verify(by_old, json.dumps([str(keys["new"][1])]), retire_old)  # old .pub gone too
    assert code == 4 and "refused (retired_key)" in out
    code, out = verify(by_old, json.dumps([str(keys["new"][1])]))  # gone but not retired: unknown
    assert code == 4 and "refused (unknown_key)" in out


def test_re_signing_replaces_the_signature_and_keeps_a_symlink(signed: Path, keys: Keys, tmp_path: Path) -> None:
    link = tmp_path / "current.tflite"
    link.symlink_to(signed.name)
    sign_model(link, load_private(keys["old"][0]), 6)
    assert link.is_symlink()
    m = check_model(signed, policy(keys, "old"), min_version=6)
    assert m is not None and m.key_id == kid(keys, "old") and m.version == 6
    assert refused(signed, policy(keys, "new")).reason is Refusal.UNKNOWN_KEY


# -- refusals -------------------------------------------------------------------------------------


@dataclass
class Ctx:
    """What a refusal case starts from: the signed bundle, a folder, the keys and the test models."""

    signed: Path
    tmp: Path
    keys: Keys
    models_dir: Path


def _flip_bit(c: Ctx) -> Path:
    data = bytearray(c.signed.read_bytes())
    data[len(data) // 3] ^= 0x10  # inside the flatbuffer: weights, still loadable
    out = c.tmp / "flipped.tflite"
    out.write_bytes(bytes(data))
    return out


def _flip_bit_and_fix_metadata(c: Ctx) -> Path:
    """The flatbuffer changed and edge_resnet.json's digest made to fit it: only the signature knows."""
    mf = read_model(c.signed)
    assert mf.meta is not None
    flat = bytearray(mf.flatbuffer)
    flat[len(flat) // 3] ^= 0x10
    mf.meta.model_sha256 = hashlib.sha256(bytes(flat)).hexdigest()
    meta = mf.meta.to_json().encode()
    return rewrite(c.signed, c.tmp / "refit.tflite", lambda m: m.update({"edge_resnet.json": meta}), flat=bytes(flat))


def _edit_manifest(c: Ctx) -> Path:
    def bump(m: dict[str, bytes]) -> None:
        env = json.loads(m[SIGNATURE_NAME])
        env["manifest"] = env["manifest"].replace('"version":5', '"version":9')
        m[SIGNATURE_NAME] = json.dumps(env).encode()

    return rewrite(c.signed, c.tmp / "manifest.tflite", bump)


def _edit_labels(c: Ctx) -> Path:
    return rewrite(c.signed, c.tmp / "labels.tflite",
                   lambda m: m.update({"labels.txt": m["labels.txt"].replace(b"macaw", b"pigeon")}))


def _add_a_member(c: Ctx) -> Path:
    return rewrite(c.signed, c.tmp / "added.tflite", lambda m: m.update({"head.npz": b"not the head you trained"}))


def _unsigned(c: Ctx) -> Path:
    return rewrite(c.signed, c.tmp / "stripped.tflite", lambda m: m.pop(SIGNATURE_NAME))


def _unknown_key(c: Ctx) -> Path:
    out = c.tmp / "stranger.tflite"
    out.write_bytes(c.signed.read_bytes())
    sign_model(out, load_private(c.keys["stranger"][0]), 5)
    return out


def _forged_key_id(c: Ctx) -> Path:
    """Signed by a stranger, claiming to be the trusted key."""
    out = _unknown_key(c)

    def claim(m: dict[str, bytes]) -> None:
        env = Envelope.from_bytes(m[SIGNATURE_NAME])
        m[SIGNATURE_NAME] = Envelope(kid(c.keys, "new"), env.manifest, env.signature).to_bytes()

    return rewrite(out, c.tmp / "forged.tflite", claim)


def _copied_signature(c: Ctx) -> Path:
    """signature.json of the c.signed MobileNet v2 put into a MobileNet v1 bundle."""
    other = make_bundle(c.models_dir, c.tmp / "v1.tflite", "mobilenet_v1_0.75_192_quant.tflite")
    sig = read_model(c.signed).signature
    assert sig is not None
    return rewrite(other, c.tmp / "copied.tflite", lambda m: m.update({SIGNATURE_NAME: sig}))


def _garbage_signature(c: Ctx) -> Path:
    return rewrite(c.signed, c.tmp / "garbage.tflite", lambda m: m.update({SIGNATURE_NAME: b"{\"format\": 1"}))


def _not_a_model(c: Ctx) -> Path:
    out = c.tmp / "page.tflite"
    out.write_bytes(b"<html>404 not found</html>\n" * 10)  # what a broken download server hands out
    return out


def _as_is(c: Ctx) -> Path:
    return c.signed


def _needs_newer(c: Ctx) -> Path:
    sign_model(c.signed, load_private(c.keys["new"][0]), 5, min_edge_resnet="99.0")
    return c.signed


REFUSALS: list[tuple[str, Callable[[Ctx], Path], dict[str, object], Refusal]] = [
    ("flatbuffer bit flipped", _flip_bit, {}, Refusal.CORRUPT),
    ("bit flipped, metadata digest refitted", _flip_bit_and_fix_metadata, {}, Refusal.DIGEST_MISMATCH),
    ("manifest edited", _edit_manifest, {}, Refusal.BAD_SIGNATURE),
    ("labels edited", _edit_labels, {}, Refusal.METADATA_CHANGED),
    ("member added", _add_a_member, {}, Refusal.METADATA_CHANGED),
    ("unsigned with require_signature", _unsigned, {}, Refusal.UNSIGNED),
    ("unknown key", _unknown_key, {}, Refusal.UNKNOWN_KEY),
    ("key id forged", _forged_key_id, {}, Refusal.BAD_SIGNATURE),
    ("retired key", _as_is, {"retired": "new"}, Refusal.RETIRED_KEY),
    ("lower version", _as_is, {"min_version": 6}, Refusal.LOWER_VERSION),
    ("expired", _as_is, {"now": datetime.now(UTC) + timedelta(days=2)}, Refusal.EXPIRED),
    ("wrong target", _as_is, {"target": "edgetpu"}, Refusal.WRONG_TARGET),
    ("signature copied from another bundle", _copied_signature, {}, Refusal.DIGEST_MISMATCH),
    ("signature.json damaged", _garbage_signature, {}, Refusal.BAD_SIGNATURE_FILE),
    ("not a model", _not_a_model, {}, Refusal.UNREADABLE),
    ("needs a newer edge-resnet", _needs_newer, {}, Refusal.NEEDS_NEWER),
]


@pytest.mark.parametrize(("make", "kw", "reason"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_refused_by_the_library_in_one_line(
    make: Callable[[Ctx], Path], kw: dict[str, object], reason: Refusal, signed: Path, keys: Keys,
    tmp_path: Path, models_dir: Path,
) -> None:
    kw = dict(kw)
    retired = (kid(keys, str(kw.pop("retired"))),) if "retired" in kw else ()
    model = make(Ctx(signed, tmp_path, keys, models_dir))
    assert refused(model, policy(keys, "old", "new", retired=retired), **kw).reason is reason
    if model != signed and reason is not Refusal.UNREADABLE:  # the daemon's way refuses alike
        try:
            mf = read_model(model)
        except ModelError as e:
            assert reason is Refusal.CORRUPT and "corrupt" in str(e)  # read_model saw it first
        else:
            with pytest.raises(ModelRefused) as e2:
                check_model(mf, policy(keys, "old", "new", retired=retired), **kw)  # type: ignore[arg-type]
            assert e2.value.reason is reason


CLI_REFUSALS = [r for r in REFUSALS if "now" not in r[2]]  # the CLI runs on today's clock


@pytest.mark.parametrize(("make", "kw", "reason"), [r[1:] for r in CLI_REFUSALS], ids=[r[0] for r in CLI_REFUSALS])
def test_verify_refuses_with_exit_4_and_one_line(
    make: Callable[[Ctx], Path], kw: dict[str, object], reason: Refusal, signed: Path, keys: Keys,
    tmp_path: Path, models_dir: Path,
) -> None:
    model = make(Ctx(signed, tmp_path, keys, models_dir))
    cfg = tmp_path / "device.toml"
    retired = f'retired = ["{kid(keys, str(kw["retired"]))}"]\n' if "retired" in kw else ""
    cfg.write_text(f"[trust]\nkeys = {json.dumps([str(keys['old'][1]), str(keys['new'][1])])}\n{retired}")
    args = ["verify", str(model), "--config", str(cfg)]
    args += ["--min-version", str(kw["min_version"])] if "min_version" in kw else []
    args += ["--target", str(kw["target"])] if "target" in kw else []
    r = run_cli(*args)
    assert r.returncode == 4 and r.stdout == "", r
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"edge-resnet: error: {model}: refused ({reason.value}): ")


def test_an_edge_tpu_model_is_signed_for_the_edge_tpu_only(models_dir: Path, keys: Keys, tmp_path: Path) -> None:
    model = make_bundle(models_dir, tmp_path / "tpu.tflite", "mobilenet_v1_0.75_192_quant_edgetpu.tflite")
    r = run_cli("sign", str(model), "--key", str(keys["new"][0]), "--version", "1", "--target", "cpu")
    assert r.returncode == 4 and "compiled for the Edge TPU, not --target cpu" in r.stderr
    assert read_model(model).signature is None  # nothing written
    assert run_cli("sign", str(model), "--key", str(keys["new"][0]), "--version", "1").returncode == 0
    r = run_cli("verify", str(model), "--trust", str(keys["new"][1]), "--target", "cpu")
    assert r.returncode == 4 and "refused (wrong_target): signed for edgetpu, this device runs cpu" in r.stderr
    assert run_cli("verify", str(model), "--trust", str(keys["new"][1]), "--target", "edgetpu").returncode == 0


# -- what sign refuses ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("what", "extra", "message"),
    [
        ("plain", [], "plain .tflite without edge-resnet metadata"),
        ("corrupt", [], "is corrupt"),
        ("bundle", ["--expires", "2001-01-01"], "--expires 2001-01-01 is in the past"),
        ("bundle", ["--expires", "31.12.2030"], "expected a date like 2026-12-31"),
        ("bundle", ["--version", "-1"], "out of range"),
    ],
)
def test_sign_refuses_in_one_line_and_writes_nothing(
    what: str, extra: list[str], message: str, unsigned: Path, mobilenet_quant: Path, keys: Keys, tmp_path: Path
) -> None:
    model = tmp_path / "m.tflite"
    data = bytearray((mobilenet_quant if what == "plain" else unsigned).read_bytes())
    if what == "corrupt":
        data[len(data) // 3] ^= 0x10
    model.write_bytes(bytes(data))
    args = ["sign", str(model), "--key", str(keys["new"][0]), "--version", "3", *extra]
    r = run_cli(*args)
    assert r.returncode in (2, 4) and message in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 if r.returncode == 4 else lines[-1].startswith("edge-resnet sign: error: ")  # after usage
    assert model.read_bytes() == bytes(data) and [p.name for p in tmp_path.iterdir()] == ["m.tflite"]


# -- [trust] ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("require_signature = true", "needs at least one key"),
        ('keys = ["a.pub"]\nretired = ["not-an-id"]', "retired[0]: 'not-an-id' is not a key id"),
        ('keys = ["a.pub"]\nrequire_signature = "yes"', "expected true or false"),
        ('keys = ["a.pub"]\nrequire_signatures = true', "unknown key 'require_signatures'"),
        ('keys = ["a.pub", "a.pub"]', "listed twice"),
    ],
)
def test_trust_table_mistakes_are_one_line(table: str, message: str, tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[trust]\n{table}\n")
    with pytest.raises(ConfigError, match=re.escape(message)) as e:
        trust_from_file(cfg)
    assert "\n" not in str(e.value) and str(e.value).startswith(f"{cfg}: ")


def test_trust_keys_are_read_when_the_policy_is_made(keys: Keys, tmp_path: Path) -> None:
    good = load_policy(TrustConfig(keys=[str(keys["old"][1])], require_signature=True))
    assert set(good.keys) == {kid(keys, "old")} and good.require_signature
    with pytest.raises(ConfigError, match="not found"):
        load_policy(TrustConfig(keys=[str(tmp_path / "gone.pub")]))
    with pytest.raises(ConfigError, match="not a PEM public key"):
        load_policy(TrustConfig(keys=[str(keys["old"][0])]))  # the private key listed by mistake
    r = run_cli("verify", str(tmp_path / "x.tflite"), "--config", str(tmp_path / "none.toml"))
    assert r.returncode == 3 and "does not exist" in r.stderr


# -- the streaming reader --------------------------------------------------------------------------


def test_read_parts_hashes_what_read_model_reads(signed: Path, mobilenet_quant: Path) -> None:
    parts, mf = read_parts(signed, chunk=4096), read_model(signed)
    assert (parts.model_sha256, parts.model_size) == (mf.sha256, len(mf.flatbuffer))
    assert parts.members == mf.members and parts.signature == mf.signature
    plain = read_parts(mobilenet_quant)
    assert plain.meta is None and plain.model_sha256 == read_model(mobilenet_quant).sha256


def test_a_duplicated_archive_member_is_refused(signed: Path, tmp_path: Path) -> None:
    """Two labels.txt: one reader might take the first, another the last; neither gets to choose."""
    out = tmp_path / "dup.tflite"
    out.write_bytes(signed.read_bytes())
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(out, "a") as zf:
        zf.writestr("labels.txt", "pigeon\n")
    with pytest.raises(ModelError, match="appears twice"):
        read_model(out)


def test_expiry_is_a_utc_date_valid_through_its_day(signed: Path, keys: Keys) -> None:
    pol = policy(keys, "new")
    end = datetime.combine(TOMORROW, datetime.max.time(), UTC)
    assert check_model(signed, pol, now=end) is not None
    assert refused(signed, pol, now=end + timedelta(seconds=1)).reason is Refusal.EXPIRED


def test_an_archive_that_unpacks_to_gigabytes_is_refused_before_it_is_read(signed: Path, tmp_path: Path) -> None:
    """A downloaded file is read before its signature can be checked: a ZIP bomb must not fill memory."""
    mf = read_model(signed)
    bomb = dict(mf.members, **{"pad.bin": bytes(65 << 20)})  # 65 MiB of zeros, deflated to ~64 KB
    out = write_members(mf.flatbuffer, bomb, tmp_path / "bomb.tflite")
    assert out.stat().st_size < len(mf.flatbuffer) + (1 << 20)
    with pytest.raises(ModelError, match="unpacks to 68 MB"):
        read_model(out)
    assert refused(out, TrustPolicy()).reason is Refusal.UNREADABLE
