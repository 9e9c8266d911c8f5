#!/usr/bin/env bash
# Install edge-resnet as a hardened systemd service on Raspberry Pi OS / Debian.
#
#   sudo deploy/install.sh [OPTIONS] [PACKAGE]
#
# PACKAGE is what pip installs into the venv: a wheel file, a source directory, or a requirement
# (default: edge-resnet from PyPI). Every step checks before it acts, so running it again changes
# nothing; see deploy/README.md.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: install.sh [OPTIONS] [PACKAGE]

Installs edge-resnet: system user `edge-resnet`, venv in /opt/edge-resnet/venv (with
--system-site-packages, so apt's python3-picamera2 is visible), the package, the config
/etc/edge-resnet/config.toml (an existing one is kept), models dir /var/lib/edge-resnet/models,
the Coral udev rule, and the systemd units (edge-resnet.service enabled).

PACKAGE       wheel file, source directory or pip requirement (default: edge-resnet)

Options:
  --dry-run     print what would be done, change nothing
  --prefix DIR  install the files into the staging root DIR (implies --no-system)
  --no-system   files only: no useradd/groupadd, chown, venv/pip, systemctl or udevadm
                (each such step is printed as "skip"); run again without it on the device.
                Under --prefix the unit is still enabled in the staging root
                (`systemctl --root`, symlinks only) when systemctl is available
  --start       also start (or restart) edge-resnet.service
  --no-enable   install the units but do not enable edge-resnet.service
  --python EXE  interpreter for the venv (default: python3)
  --uninstall   remove what the installer added; config and state (models, queue) are kept
  --purge       with --uninstall: also remove config, state, and the user/groups it created
  -h, --help    this text
EOF
}

# -- options ------------------------------------------------------------------------------------
DRY_RUN=0
SYSTEM=1
PREFIX=""
START=0
ENABLE=1
PYTHON=python3
UNINSTALL=0
PURGE=0
PACKAGE="edge-resnet"

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --prefix)
            [ $# -ge 2 ] || { echo "install.sh: --prefix needs a directory" >&2; exit 2; }
            PREFIX="$2"; SYSTEM=0; shift ;;
        --prefix=*) PREFIX="${1#--prefix=}"; SYSTEM=0 ;;
        --no-system) SYSTEM=0 ;;
        --start) START=1 ;;
        --no-enable) ENABLE=0 ;;
        --python)
            [ $# -ge 2 ] || { echo "install.sh: --python needs an interpreter" >&2; exit 2; }
            PYTHON="$2"; shift ;;
        --uninstall) UNINSTALL=1 ;;
        --purge) PURGE=1 ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) PACKAGE="$1" ;;
    esac
    shift
done

if [ "$PURGE" = 1 ] && [ "$UNINSTALL" = 0 ]; then
    echo "install.sh: --purge only goes with --uninstall" >&2
    exit 2
fi

# chmod/chown without following links needs O_NOFOLLOW: python3 is on every target (the venv needs it)
PY_ATTRS="$(command -v python3 || true)"
[ -n "$PY_ATTRS" ] || PY_ATTRS="$PYTHON"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SRC="$(cd "$HERE/.." && pwd)"

if [ -n "$PREFIX" ]; then
    if [ "$DRY_RUN" = 0 ]; then
        mkdir -p -- "$PREFIX" || { echo "install.sh: cannot create $PREFIX" >&2; exit 1; }
    fi
    if [ -d "$PREFIX" ]; then PREFIX="$(cd "$PREFIX" && pwd)"; fi
    PREFIX="${PREFIX%/}"
fi
ROOT="$PREFIX"  # every path below is "$ROOT/..."; empty for the live system

SVC_USER=edge-resnet
GROUPS_NEEDED="video plugdev apex"
OPT=/opt/edge-resnet
VENV=$OPT/venv
ETC=/etc/edge-resnet
# what the installer created; in the config dir, so it outlives an --uninstall that keeps config
MANIFEST=$ETC/.install-manifest
CONFIG=$ETC/config.toml
STATE=/var/lib/edge-resnet
MODELS=$STATE/models
UNIT_DIR=/etc/systemd/system
UNITS="edge-resnet.service edge-resnet@.service"
UDEV_RULE=/etc/udev/rules.d/99-edge-resnet-coral.rules

# -- helpers ------------------------------------------------------------------------------------
say() { printf '%s\n' "$*"; }
quote() { local q; q="$(printf '%q ' "$@")"; printf '%s' "${q% }"; }

# run CMD...: print it; execute it unless --dry-run.
run() {
    say "+ $(quote "$@")"
    if [ "$DRY_RUN" = 0 ]; then "$@"; fi
}

# system CMD...: a step on the live system; only printed under --no-system / --prefix.
system() {
    if [ "$SYSTEM" = 0 ]; then
        say "skip (--no-system): $(quote "$@")"
    else
        run "$@"
    fi
}

# live CMD...: a step that needs a running systemd/udev (reload, start). Skipped, with a note, under
# --no-system and where they are not running (a chroot, a container, an image build).
live() {
    if [ "$SYSTEM" = 0 ]; then
        say "skip (--no-system): $(quote "$@")"
    elif [ ! -d /run/systemd/system ]; then
        say "skip (systemd is not running): $(quote "$@")"
    else
        run "$@" || say "warning: $(quote "$@") failed; continuing"
    fi
}

# unit_enable / unit_disable NAME: symlinks only, so they also work offline and in a staging root
# (systemctl --root), which image builds want. Skipped without systemctl, or for --no-system
# on the live system.
unit_enable() {
    if [ "$SYSTEM" = 1 ]; then
        run systemctl enable "$1"
    elif [ -n "$ROOT" ] && command -v systemctl >/dev/null; then
        make_parents "$UNIT_DIR/multi-user.target.wants/x"
        run systemctl --root="$ROOT" --quiet enable "$1"
    else
        say "skip (--no-system): systemctl enable $1"
    fi
}

unit_disable() {
    if [ "$SYSTEM" = 1 ]; then
        if [ -d /run/systemd/system ]; then run systemctl disable --now "$1"; else run systemctl disable "$1"; fi
    elif [ -n "$ROOT" ] && command -v systemctl >/dev/null; then
        run systemctl --root="$ROOT" --quiet disable "$1"
    else
        say "skip (--no-system): systemctl disable $1"
    fi
}

# is_link PATH: true (with a warning) when PATH is a symbolic link. The service user owns
# /var/lib/edge-resnet and may plant links there; a root chmod/chown through one would change the
# link's target (/etc/shadow, say), so the installer never follows them.
is_link() {
    if [ -L "$ROOT$1" ]; then
        say "warning: $1 is a symbolic link (to $(readlink -- "$ROOT$1")); not following it. Remove it and run the installer again" >&2
        return 0
    fi
    return 1
}

# set_attrs PATH MODE [USER:GROUP]: chmod/chown a directory through a handle opened with O_NOFOLLOW,
# so a link swapped in after the check above is refused too (no window between check and change).
set_attrs() {
    local path="$1" mode="$2" owner="${3:-}"
    if [ -n "$owner" ] && [ "$SYSTEM" = 0 ]; then
        say "skip (--no-system): chown $owner $path"
        owner=""
    fi
    say "+ set $path mode $mode${owner:+ owner $owner} (not following links)"
    [ "$DRY_RUN" = 1 ] && return 0
    "$PY_ATTRS" - "$ROOT$path" "$mode" "$owner" <<'PYEOF'
import grp, os, pwd, sys
path, mode, owner = sys.argv[1], int(sys.argv[2], 8), sys.argv[3]
try:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
except OSError as e:
    sys.exit(f"install.sh: {path}: {e.strerror}; not changing it (a symbolic link? remove it and run again)")
try:
    if owner:
        user, group = owner.split(":")
        os.fchown(fd, pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid)
    os.fchmod(fd, mode)
finally:
    os.close(fd)
PYEOF
}

# ensure_owner USER:GROUP PATH: chown only when it differs (a re-run changes nothing); never
# through a symbolic link.
ensure_owner() {
    if [ "$SYSTEM" = 0 ]; then
        say "skip (--no-system): chown $1 $2"
    elif is_link "$2"; then
        return 0
    elif [ ! -e "$ROOT$2" ] || [ "$(stat -c %U:%G "$ROOT$2" 2>/dev/null)" != "$1" ]; then
        if [ -d "$ROOT$2" ]; then set_attrs "$2" "$(stat -c %a "$ROOT$2")" "$1"; else run chown -h "$1" "$ROOT$2"; fi
    fi
}

# Manifest: one "KIND PATH-OR-NAME" line per thing this installer created, so --uninstall removes
# exactly those. Kinds: file, tree (removed whole), config and state (kept unless --purge),
# user, group.
declare -a ADDED=()
note() { ADDED+=("$1 $2"); }

manifest_has() {
    [ -f "$ROOT$MANIFEST" ] && grep -qxF -- "$1 $2" "$ROOT$MANIFEST"
}

# make_parents PATH: create the missing directories above PATH, recording each one ("dir", removed
# on --uninstall when empty), so a staging root is left as it was found.
make_parents() {
    local d missing=()
    d="$(dirname "$1")"
    while [ "$d" != / ] && [ ! -d "$ROOT$d" ]; do
        missing+=("$d")
        d="$(dirname "$d")"
    done
    local i
    for ((i = ${#missing[@]} - 1; i >= 0; i--)); do
        run mkdir -m 0755 -- "$ROOT${missing[i]}"
        note dir "${missing[i]}"
    done
}

# install_file SRC DEST MODE [KIND]: copy when missing or different; record it.
install_file() {
    local src="$1" dest="$2" mode="$3" kind="${4:-file}"
    if [ -f "$ROOT$dest" ] && cmp -s "$src" "$ROOT$dest"; then
        say "unchanged $dest"
        if [ "$(stat -c %a "$ROOT$dest")" != "${mode#0}" ]; then run chmod "$mode" "$ROOT$dest"; fi
    else
        make_parents "$dest"
        run install -m "$mode" "$src" "$ROOT$dest"
    fi
    note "$kind" "$dest"
}

# make_dir DIR MODE KIND [OWNER]: create when missing; record it only if this run or an earlier
# one created it (a directory that was there before is not ours to remove).
make_dir() {
    local dir="$1" mode="$2" kind="$3" owner="${4:-}"
    if is_link "$dir"; then
        return 0
    elif [ -d "$ROOT$dir" ]; then
        if manifest_has "$kind" "$dir"; then note "$kind" "$dir"; fi
        say "exists $dir"
        if [ "$(stat -c %a "$ROOT$dir")" != "${mode#0}" ]; then set_attrs "$dir" "$mode"; fi
    else
        make_parents "$dir"
        run install -d -m "$mode" "$ROOT$dir"
        note "$kind" "$dir"
    fi
    if [ -n "$owner" ]; then ensure_owner "$owner" "$dir"; fi
}

write_manifest() {
    local tmp line
    # parent directories an earlier run created are still ours
    if [ -f "$ROOT$MANIFEST" ]; then
        while IFS= read -r line; do
            if [ "${line%% *}" = dir ] && [ -d "$ROOT${line#dir }" ]; then ADDED+=("$line"); fi
        done <"$ROOT$MANIFEST"
    fi
    if [ "$DRY_RUN" = 1 ]; then
        say "+ write $MANIFEST (${#ADDED[@]} entries)"
        return
    fi
    tmp="$(mktemp)"
    printf '%s\n' "${ADDED[@]}" | sort -u >"$tmp"
    if [ -f "$ROOT$MANIFEST" ] && cmp -s "$tmp" "$ROOT$MANIFEST"; then
        rm -f -- "$tmp"
        say "unchanged $MANIFEST"
    else
        install -D -m 0644 "$tmp" "$ROOT$MANIFEST"
        rm -f -- "$tmp"
        say "+ write $MANIFEST"
    fi
}

need_root() {
    if [ "$SYSTEM" = 1 ] && [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
        echo "install.sh: run as root (sudo), or use --dry-run / --prefix DIR / --no-system" >&2
        exit 1
    fi
}

# -- install ------------------------------------------------------------------------------------
do_install() {
    local u
    for u in $UNITS; do
        [ -f "$SRC/systemd/$u" ] || { echo "install.sh: $SRC/systemd/$u missing; run from a checkout" >&2; exit 1; }
    done
    need_root
    [ "$DRY_RUN" = 1 ] && say "(dry run: nothing is changed)"
    [ -n "$ROOT" ] && say "staging root: $ROOT (system steps skipped)"

    say "== groups and user"
    local g
    for g in $GROUPS_NEEDED; do
        if getent group "$g" >/dev/null; then
            say "exists group $g"
            if manifest_has group "$g"; then note group "$g"; fi
        else
            system groupadd --system "$g"
            note group "$g"
        fi
    done
    if getent passwd "$SVC_USER" >/dev/null; then
        say "exists user $SVC_USER"
        if manifest_has user "$SVC_USER"; then note user "$SVC_USER"; fi
    else
        system useradd --system --user-group --home-dir "$STATE" --no-create-home \
            --shell /usr/sbin/nologin --comment "edge-resnet daemon" "$SVC_USER"
        note user "$SVC_USER"
    fi
    if [ "$SYSTEM" = 1 ] && [ "$DRY_RUN" = 0 ]; then
        for g in $GROUPS_NEEDED; do
            if ! id -nG "$SVC_USER" | tr ' ' '\n' | grep -qxF "$g"; then run usermod -aG "$g" "$SVC_USER"; fi
        done
    else
        say "skip: add $SVC_USER to groups ${GROUPS_NEEDED// /,}"
    fi

    say "== directories"
    make_dir "$OPT" 0755 tree
    make_dir "$ETC" 0755 state
    make_dir "$STATE" 0750 state "$SVC_USER:$SVC_USER"
    make_dir "$MODELS" 0750 state "$SVC_USER:$SVC_USER"

    say "== venv and package"
    if [ -x "$ROOT$VENV/bin/python" ]; then
        say "exists $VENV"
    else
        if [ "$SYSTEM" = 1 ] && ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
            echo "install.sh: $PYTHON cannot create a venv; sudo apt install python3-venv" >&2
            [ "$DRY_RUN" = 1 ] || exit 1
        fi
        system "$PYTHON" -m venv --system-site-packages "$ROOT$VENV"
    fi
    note tree "$VENV"
    # apt's python3-picamera2 and its C helpers (simplejpeg, ...) are built against apt's numpy,
    # 1.x on bookworm. The venv sees it (--system-site-packages) and must keep it: recent
    # opencv-python-headless wheels require numpy>=2, which pip would put in front of it and break
    # picamera2 ("compiled using NumPy 1.x cannot be run in NumPy 2"). So pin what is there.
    local sysnp constraints=()
    sysnp=""
    if [ "$SYSTEM" = 1 ]; then sysnp="$("$PYTHON" -c 'import numpy; print(numpy.__version__)' 2>/dev/null || true)"; fi
    if [ "${sysnp%%.*}" = 1 ]; then
        say "system numpy $sysnp (numpy 1.x): keeping it, with an OpenCV built for it"
        constraints=(-c /dev/stdin)
    fi
    if [ "$SYSTEM" = 1 ] && [ "$DRY_RUN" = 0 ]; then
        say "+ $(quote "$ROOT$VENV/bin/python" -m pip install --upgrade "$PACKAGE" "${constraints[@]}")"
        printf 'numpy==%s\nopencv-python-headless<4.12\n' "$sysnp" |
            "$ROOT$VENV/bin/python" -m pip install --disable-pip-version-check --upgrade "$PACKAGE" "${constraints[@]}"
    else
        system "$ROOT$VENV/bin/python" -m pip install --upgrade "$PACKAGE" "${constraints[@]}"
    fi

    say "== configuration"
    if [ -f "$ROOT$CONFIG" ]; then
        say "kept existing $CONFIG"
        if manifest_has config "$CONFIG"; then note config "$CONFIG"; fi
    elif [ -f "$HERE/config.example.toml" ]; then
        make_parents "$CONFIG"
        run install -m 0640 "$HERE/config.example.toml" "$ROOT$CONFIG"
        note config "$CONFIG"
        say "edit $CONFIG (model, source, broker), then: edge-resnet config check $CONFIG"
    else
        echo "install.sh: warning: $HERE/config.example.toml missing; no config written" >&2
    fi
    # root owns it, the service reads it through its group; it may hold an MQTT password
    if [ -f "$ROOT$CONFIG" ] || [ "$DRY_RUN" = 1 ]; then ensure_owner "root:$SVC_USER" "$CONFIG"; fi

    say "== udev rule for the Coral USB accelerator"
    local before=""
    [ -f "$ROOT$UDEV_RULE" ] && before="$(cksum <"$ROOT$UDEV_RULE")"
    install_file "$HERE/99-edge-resnet-coral.rules" "$UDEV_RULE" 0644
    if [ "$before" != "$( [ -f "$ROOT$UDEV_RULE" ] && cksum <"$ROOT$UDEV_RULE")" ] || [ "$DRY_RUN" = 1 ]; then
        live udevadm control --reload-rules
        live udevadm trigger --subsystem-match=usb --subsystem-match=apex --action=add
    fi

    say "== systemd units"
    for u in $UNITS; do
        install_file "$SRC/systemd/$u" "$UNIT_DIR/$u" 0644
    done
    live systemctl daemon-reload
    if [ "$ENABLE" = 1 ]; then
        if [ -L "$ROOT$UNIT_DIR/multi-user.target.wants/edge-resnet.service" ]; then
            say "enabled edge-resnet.service"
        else
            unit_enable edge-resnet.service
        fi
    fi
    write_manifest
    if [ "$START" = 1 ]; then live systemctl restart edge-resnet.service; fi

    say "== done"
    say "next: put a model in $MODELS, edit $CONFIG, run \`sudo -u $SVC_USER $VENV/bin/edge-resnet doctor --config $CONFIG\`,"
    say "      then \`systemctl start edge-resnet\` and \`journalctl -u edge-resnet -f\`"
}

# -- uninstall ----------------------------------------------------------------------------------
remove_path() {
    local p="$1"
    if [ -e "$ROOT$p" ] || [ -L "$ROOT$p" ]; then run rm -rf -- "$ROOT$p"; else say "absent $p"; fi
}

do_uninstall() {
    need_root
    [ "$DRY_RUN" = 1 ] && say "(dry run: nothing is changed)"
    local entries=()
    if [ -f "$ROOT$MANIFEST" ]; then
        mapfile -t entries <"$ROOT$MANIFEST"
    else
        say "no $MANIFEST: removing the default set"
        entries=("file $UNIT_DIR/edge-resnet.service" "file $UNIT_DIR/edge-resnet@.service" "file $UDEV_RULE"
                 "tree $OPT" "config $CONFIG" "state $STATE")
    fi

    say "== services"
    local link name
    for link in "$ROOT$UNIT_DIR"/*.wants/edge-resnet@*.service; do
        [ -e "$link" ] || [ -L "$link" ] || continue
        name="$(basename "$link")"
        unit_disable "$name"
    done
    if [ -e "$ROOT$UNIT_DIR/edge-resnet.service" ]; then unit_disable edge-resnet.service; fi

    say "== files"
    local e kind path
    for e in "${entries[@]}"; do
        kind="${e%% *}"; path="${e#* }"
        case "$kind" in
            file|tree) remove_path "$path" ;;
        esac
    done
    live systemctl daemon-reload
    live udevadm control --reload-rules

    # config and state: only with --purge, deepest first (models before /var/lib/edge-resnet)
    local kept=()
    for e in "${entries[@]}"; do
        kind="${e%% *}"; path="${e#* }"
        case "$kind" in
            config|state)
                if [ "$PURGE" = 1 ]; then kept+=("$path"); else say "kept $path (use --purge to remove)"; fi ;;
        esac
    done
    # /etc/edge-resnet is shared with the admin (secrets.env, NAME.toml, a CA file): only the files
    # the manifest lists go, and the directory only when nothing else is left in it.
    local purge_etc=0
    if [ "${#kept[@]}" -gt 0 ]; then
        while IFS= read -r path; do
            if [ "$path" = "$ETC" ]; then purge_etc=1; else remove_path "$path"; fi
        done < <(printf '%s\n' "${kept[@]}" | sort -r)
    fi

    if [ "$PURGE" = 1 ]; then
        for e in "${entries[@]}"; do
            kind="${e%% *}"; path="${e#* }"
            case "$kind" in
                user) system userdel "$path" ;;
            esac
        done
        for e in "${entries[@]}"; do
            kind="${e%% *}"; path="${e#* }"
            case "$kind" in
                group) if getent group "$path" >/dev/null; then system groupdel "$path"; fi ;;
            esac
        done
    fi
    if [ "$PURGE" = 1 ]; then remove_path "$MANIFEST"; fi
    if [ "$purge_etc" = 1 ] && [ -d "$ROOT$ETC" ] && ! [ -L "$ROOT$ETC" ]; then
        local others
        others="$(find "$ROOT$ETC" -mindepth 1 -maxdepth 1 -printf '%f ')"
        if [ -z "$others" ]; then
            run rmdir -- "$ROOT$ETC"
        else
            say "kept $ETC: it holds files the installer did not create: ${others% }"
        fi
    fi
    # parent directories the installer created, deepest first, when they are empty
    local dirs=()
    for e in "${entries[@]}"; do
        kind="${e%% *}"; path="${e#* }"
        if [ "$kind" = dir ]; then dirs+=("$path"); fi
    done
    if [ "${#dirs[@]}" -gt 0 ]; then
        while IFS= read -r path; do
            if [ -d "$ROOT$path" ] && [ -z "$(ls -A "$ROOT$path")" ]; then run rmdir -- "$ROOT$path"; fi
        done < <(printf '%s\n' "${dirs[@]}" | sort -r)
    fi
    if [ "$PURGE" = 0 ]; then
        # remember what is left (config, state, user, groups) for a later --uninstall --purge
        ADDED=()
        for e in "${entries[@]}"; do
            kind="${e%% *}"; path="${e#* }"
            case "$kind" in
                config|state|user|group) ADDED+=("$e") ;;
            esac
        done
        if [ -d "$ROOT$ETC" ]; then write_manifest; fi
    fi
    say "== removed"
}

if [ "$UNINSTALL" = 1 ]; then do_uninstall; else do_install; fi
