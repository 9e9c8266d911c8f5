"""deploy/install.sh: shellcheck-clean, installs into a staging root, idempotent (a second run
changes no file, mode, size or mtime), keeps an existing config, and uninstalls what it added."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "deploy" / "install.sh"

EXPECTED_FILES = {
    "etc/systemd/system/edge-resnet.service": 0o644,
    "etc/systemd/system/edge-resnet@.service": 0o644,
    "etc/udev/rules.d/99-edge-resnet-coral.rules": 0o644,
    "etc/edge-resnet/config.toml": 0o640,
}
EXPECTED_DIRS = {
    "opt/edge-resnet": 0o755,
    "etc/edge-resnet": 0o755,
    "var/lib/edge-resnet": 0o750,
    "var/lib/edge-resnet/models": 0o750,
}


def test_shellcheck_clean() -> None:
    exe = shutil.which("shellcheck")
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("shellcheck is not installed (CI installs it: apt-get install shellcheck)")
        pytest.skip("shellcheck is not installed")
    r = subprocess.run([exe, "--severity=style", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """The parts of a checkout the installer reads (deploy/, systemd/), with a config example
    (the repo's own if present)."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "deploy", src / "deploy")
    shutil.copytree(REPO / "systemd", src / "systemd")
    example = src / "deploy" / "config.example.toml"
    if not example.exists():
        example.write_text('device_id = "edge-resnet"\n')
    return src


def install(checkout: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(checkout / "deploy" / "install.sh"), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def snapshot(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """path -> (mode, size, mtime_ns, sha256) for everything under root."""
    out: dict[str, tuple[int, int, int, str]] = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        if p.is_symlink():
            digest = "-> " + os.readlink(p)
        else:
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
        out[str(p.relative_to(root))] = (st.st_mode, st.st_size if digest else 0, st.st_mtime_ns, digest)
    return out


def without_dir_mtimes(snap: dict[str, tuple[int, int, int, str]]) -> dict[str, tuple[int, int, int, str]]:
    """A directory that was there before gets a new mtime when entries come and go: compare the rest."""
    return {k: (m, s, 0 if not h else t, h) for k, (m, s, t, h) in snap.items()}


def test_install_into_prefix_is_idempotent_and_uninstalls(checkout: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hostname").write_text("pi\n")  # something that was there before
    before = snapshot(root)

    r = install(checkout, "--prefix", str(root))
    assert r.returncode == 0, r.stdout + r.stderr
    for rel, mode in EXPECTED_FILES.items():
        p = root / rel
        assert p.is_file(), rel
        assert p.stat().st_mode & 0o777 == mode, rel
    for rel, mode in EXPECTED_DIRS.items():
        assert (root / rel).is_dir() and (root / rel).stat().st_mode & 0o777 == mode, rel
    assert (root / "etc/systemd/system/edge-resnet.service").read_bytes() == (
        REPO / "systemd" / "edge-resnet.service"
    ).read_bytes()
    assert (root / "etc/edge-resnet/config.toml").read_bytes() == (
        checkout / "deploy" / "config.example.toml"
    ).read_bytes()
    # under --prefix the system steps are shown, not done
    for step in ("useradd", "systemctl daemon-reload", "pip install", "udevadm"):
        assert any(line.startswith("skip (--no-system): ") and step in line for line in r.stdout.splitlines()), step
    # enabled inside the staging root (symlinks only, `systemctl --root`), as an image build wants
    if shutil.which("systemctl"):
        wants = root / "etc/systemd/system/multi-user.target.wants/edge-resnet.service"
        assert wants.is_symlink() and os.readlink(wants) == "/etc/systemd/system/edge-resnet.service"
    first = snapshot(root)
    print(f"\ninstalled {len(first) - len(before)} paths into the staging root")

    r2 = install(checkout, "--prefix", str(root))
    assert r2.returncode == 0, r2.stdout + r2.stderr
    second = snapshot(root)
    assert second == first, "a second run changed the tree"
    assert "\n+ " not in "\n" + r2.stdout, "a second run did something:\n" + r2.stdout

    r3 = install(checkout, "--prefix", str(root), "--uninstall")
    assert r3.returncode == 0, r3.stdout + r3.stderr
    after = snapshot(root)
    left = set(after) - set(before)
    # config and state are kept (plus the manifest that lists them, for a later --purge)
    assert left == {
        "etc/edge-resnet",
        "etc/edge-resnet/config.toml",
        "etc/edge-resnet/.install-manifest",
        "var",
        "var/lib",
        "var/lib/edge-resnet",
        "var/lib/edge-resnet/models",
    }, sorted(left)
    assert not (root / "opt").exists() and not (root / "etc/systemd").exists() and not (root / "etc/udev").exists()

    r4 = install(checkout, "--prefix", str(root), "--uninstall", "--purge")
    assert r4.returncode == 0, r4.stdout + r4.stderr
    assert without_dir_mtimes(snapshot(root)) == without_dir_mtimes(before)


def test_existing_config_is_kept_and_never_purged(checkout: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    config = root / "etc/edge-resnet/config.toml"
    config.parent.mkdir(parents=True)
    config.write_text("# mine\n")
    os.chmod(config, 0o600)
    r = install(checkout, "--prefix", str(root))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "kept existing /etc/edge-resnet/config.toml" in r.stdout
    assert config.read_text() == "# mine\n" and config.stat().st_mode & 0o777 == 0o600
    r = install(checkout, "--prefix", str(root), "--uninstall", "--purge")
    assert r.returncode == 0, r.stdout + r.stderr
    # the admin's config (and its directory) were not the installer's to remove
    assert config.read_text() == "# mine\n"
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == [
        "etc",
        "etc/edge-resnet",
        "etc/edge-resnet/config.toml",
    ]


def test_dry_run_changes_nothing(checkout: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    r = install(checkout, "--prefix", str(root), "--dry-run")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not root.exists()
    assert "install -m 0644" in r.stdout and "etc/systemd/system/edge-resnet.service" in r.stdout
    root.mkdir()
    assert install(checkout, "--prefix", str(root)).returncode == 0
    snap = snapshot(root)
    r = install(checkout, "--prefix", str(root), "--uninstall", "--purge", "--dry-run")
    assert r.returncode == 0 and "rm -rf" in r.stdout
    assert snapshot(root) == snap


def test_updated_unit_is_replaced(checkout: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert install(checkout, "--prefix", str(root)).returncode == 0
    unit = checkout / "systemd" / "edge-resnet.service"
    unit.write_text(unit.read_text().replace("RestartSec=5s", "RestartSec=7s"))
    r = install(checkout, "--prefix", str(root))
    assert r.returncode == 0
    assert "RestartSec=7s" in (root / "etc/systemd/system/edge-resnet.service").read_text()
    assert "unchanged /etc/udev/rules.d/99-edge-resnet-coral.rules" in r.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["--bogus"], "unknown option"), (["--purge"], "--purge only goes with --uninstall"), (["--prefix"], "needs")],
)
def test_bad_arguments_exit_2(checkout: Path, args: list[str], needle: str) -> None:
    r = install(checkout, *args)
    assert r.returncode == 2 and needle in r.stderr


def test_help(checkout: Path) -> None:
    r = install(checkout, "--help")
    assert r.returncode == 0 and "--prefix DIR" in r.stdout and "--uninstall" in r.stdout


def test_udev_rule_names_both_coral_usb_ids() -> None:
    rule = (REPO / "deploy" / "99-edge-resnet-coral.rules").read_text()
    assert 'ATTR{idVendor}=="1a6e", ATTR{idProduct}=="089a"' in rule
    assert 'ATTR{idVendor}=="18d1", ATTR{idProduct}=="9302"' in rule
    assert 'GROUP="plugdev"' in rule and 'SUBSYSTEM=="apex"' in rule


_SYSTEM_SCRIPT = r"""
set -eu
T="$1"; SRC="$2"; MODEL="$3"
for d in etc opt var/lib; do
    mkdir -p "$T/u/$d" "$T/w/$d"
    mount -t overlay overlay -o "lowerdir=/$d,upperdir=$T/u/$d,workdir=$T/w/$d" "/$d"
done
echo "== first"
"$SRC/deploy/install.sh" --python /usr/bin/python3 "$SRC" >"$T/first.log" 2>&1 || { tail -40 "$T/first.log"; exit 1; }
echo "groups: $(id -nG edge-resnet)"
echo "config: $(stat -c '%a %U:%G' /etc/edge-resnet/config.toml)"
echo "state: $(stat -c '%a %U:%G' /var/lib/edge-resnet) models: $(stat -c '%a %U:%G' /var/lib/edge-resnet/models)"
echo "enabled: $(readlink /etc/systemd/system/multi-user.target.wants/edge-resnet.service)"
echo "version: $(/opt/edge-resnet/venv/bin/edge-resnet --version)"
echo "== second"
"$SRC/deploy/install.sh" --python /usr/bin/python3 "$SRC" >"$T/second.log" 2>&1
grep '^+ ' "$T/second.log" || true
echo "== doctor"
install -m 0644 "$MODEL" /var/lib/edge-resnet/models/
set +e
setpriv --reuid=edge-resnet --regid=edge-resnet --init-groups \
    /opt/edge-resnet/venv/bin/edge-resnet doctor --model "/var/lib/edge-resnet/models/$(basename "$MODEL")" --json \
    >"$T/doctor.json" 2>/dev/null
echo "doctor rc: $?"
set -e
echo "== purge"
"$SRC/deploy/install.sh" --uninstall --purge >"$T/purge.log" 2>&1
id edge-resnet >/dev/null 2>&1 && echo "user still there" || echo "user gone"
for p in /opt/edge-resnet /etc/edge-resnet /etc/systemd/system/edge-resnet.service \
    /etc/udev/rules.d/99-edge-resnet-coral.rules; do
    if [ -e "$p" ]; then echo "left: $p"; fi
done
echo "== end"
"""


@pytest.mark.slow
def test_system_install_for_real_in_an_overlay(tmp_path: Path, mobilenet_quant: Path) -> None:
    """The steps --prefix skips, done for real: useradd/groupadd, chown, the venv and pip (from the
    package index), systemctl enable, then doctor as the service user and a purge. /etc, /opt and
    /var/lib are overlay mounts in a private mount namespace, so the machine itself is untouched."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("setpriv"):
        pytest.skip("needs root, unshare and setpriv")
    if subprocess.run(["/usr/bin/python3", "-m", "venv", "--help"], capture_output=True).returncode != 0:
        pytest.skip("/usr/bin/python3 has no venv module (apt install python3-venv)")
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot create a mount namespace here")
    script = tmp_path / "system.sh"
    script.write_text(_SYSTEM_SCRIPT)
    work = tmp_path / "ovl"
    work.mkdir()
    r = subprocess.run(
        ["unshare", "-m", "bash", str(script), str(work), str(REPO), str(mobilenet_quant)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = r.stdout
    print("\n" + out)
    if "overlay" in r.stderr and "mount" in r.stderr and "== first" not in out:
        pytest.skip("overlay mounts are not available here: " + r.stderr[-300:])
    assert r.returncode == 0 and "== end" in out, out + r.stderr[-2000:]
    assert set(out.split("groups: ")[1].split("\n")[0].split()) >= {"edge-resnet", "video", "plugdev", "apex"}
    assert "config: 640 root:edge-resnet" in out
    assert "state: 750 edge-resnet:edge-resnet models: 750 edge-resnet:edge-resnet" in out
    assert "enabled: /etc/systemd/system/edge-resnet.service" in out
    assert "version: edge-resnet " in out
    second = out.split("== second\n")[1].split("== doctor")[0].strip().splitlines()
    assert all("pip install" in line for line in second), second  # only pip runs again
    rows = {c["name"]: c for c in json.loads((work / "doctor.json").read_text())["checks"]}
    assert rows["model"]["result"] == "ok", rows["model"]
    assert rows["state dir"]["result"] == "ok", rows["state dir"]  # the service user can write it
    assert "user gone" in out and "left:" not in out


# -- issue 13: symbolic links in paths the service user owns, and a purge that keeps what is not ours --


def test_rerun_does_not_follow_a_planted_symlink(checkout: Path, tmp_path: Path) -> None:
    """The service user owns /var/lib/edge-resnet: it can replace `models` with a link to anything.
    The documented upgrade (running the installer again) must not chmod/chown the link's target."""
    root = tmp_path / "root"
    r = install(checkout, "--prefix", str(root))
    assert r.returncode == 0, r.stdout + r.stderr
    victim = tmp_path / "victim"  # stands for /etc/ssl/private or any root-owned folder
    victim.mkdir(mode=0o755)
    os.chmod(victim, 0o755)
    models = root / "var/lib/edge-resnet/models"
    models.rmdir()
    models.symlink_to(victim)
    r = install(checkout, "--prefix", str(root))
    assert r.returncode == 0, r.stdout + r.stderr
    assert victim.stat().st_mode & 0o777 == 0o755, "the installer followed the link and changed its target"
    assert models.is_symlink()
    assert "/var/lib/edge-resnet/models is a symbolic link" in r.stderr and "not following it" in r.stderr


def test_set_attrs_refuses_a_link_swapped_in_late(checkout: Path, tmp_path: Path) -> None:
    """The chmod itself goes through an O_NOFOLLOW handle, so a link that appears after the check is refused."""
    victim = tmp_path / "victim"
    victim.mkdir()
    os.chmod(victim, 0o755)
    link = tmp_path / "link"
    link.symlink_to(victim)
    script = f'source <(sed -n "/^set_attrs()/,/^}}/p" {checkout / "deploy/install.sh"}); ' + (
        f'say() {{ echo "$@"; }}; ROOT=""; SYSTEM=1; DRY_RUN=0; PY_ATTRS=python3; set_attrs {link} 0700'
    )
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "not changing it" in r.stderr, r.stdout + r.stderr
    assert victim.stat().st_mode & 0o777 == 0o755


def test_purge_keeps_files_the_installer_did_not_create(checkout: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    r = install(checkout, "--prefix", str(root))
    assert r.returncode == 0, r.stdout + r.stderr
    etc = root / "etc/edge-resnet"
    (etc / "secrets.env").write_text("EDGE_RESNET_MQTT_PASSWORD=s3cret\n")  # the admin's, per deploy/README
    (etc / "garage.toml").write_text('device_id = "garage"\n')
    r = install(checkout, "--prefix", str(root), "--uninstall", "--purge")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (etc / "secrets.env").read_text() == "EDGE_RESNET_MQTT_PASSWORD=s3cret\n"
    assert (etc / "garage.toml").exists()
    assert not (etc / "config.toml").exists(), "the config the installer wrote is removed"
    assert not (etc / ".install-manifest").exists()
    assert not (root / "var/lib/edge-resnet").exists()
    kept = [line for line in r.stdout.splitlines() if line.startswith("kept /etc/edge-resnet")]
    assert kept and "secrets.env" in kept[0] and "garage.toml" in kept[0], r.stdout
