#!/usr/bin/env bash
# Creates (or reuses) the Python venv that holds the ECS emulator (moto) and
# the seeding script's SDK (boto3), pinned by requirements.txt next to this file.
#
#   bash localstack/setup.sh
#
# Environment:
#   NOMAD_ECS_VENV    venv location (default: <repo root>/.venv)
#   NOMAD_ECS_PYTHON  interpreter that creates the venv (default: python3; needs >= 3.10)
#
# Idempotent and fast when nothing is to do: if the venv's python already
# reports the pinned moto and boto3 versions, pip is not run at all.
# Concurrent runs against the same venv are serialised with flock(1).
# Everything it prints goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$here/.." && pwd)"
venv="${NOMAD_ECS_VENV:-$repo_root/.venv}"
python="${NOMAD_ECS_PYTHON:-python3}"
requirements="$here/requirements.txt"

say() { printf 'setup.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# The pins live in requirements.txt only; read the two that matter for messages.
pin_of() {
    sed -n -E "s/^$1(\[[a-z,]*\])?==([^[:space:]#]+).*/\2/p" "$requirements" | head -n1
}
moto_pin="$(pin_of moto)"
boto3_pin="$(pin_of boto3)"
[[ -n "$moto_pin" && -n "$boto3_pin" ]] || die "could not read the moto and boto3 pins from $requirements"

# True when the venv has the server script and every `name==version` pin of
# requirements.txt is installed at exactly that version (one python start, ~50 ms).
venv_is_current() {
    [[ -x "$venv/bin/python" && -x "$venv/bin/moto_server" ]] || return 1
    "$venv/bin/python" - "$requirements" >/dev/null 2>&1 <<'PY'
import importlib.metadata as m, re, sys
for line in open(sys.argv[1]):
    pin = re.match(r"\s*([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^\s#;]+)", line)
    if pin and m.version(pin.group(1)) != pin.group(3):
        sys.exit(1)
PY
}

if venv_is_current; then
    say "venv $venv already has moto $moto_pin and boto3 $boto3_pin; nothing to do"
    exit 0
fi

mkdir -p "$(dirname "$venv")"
if command -v flock >/dev/null 2>&1; then
    # The lock lives outside the repo so that it leaves nothing to commit.
    lock="${TMPDIR:-/tmp}/nomad-ecs-setup.$(printf '%s' "$venv" | cksum | cut -d' ' -f1).lock"
    exec 9>"$lock"
    if ! flock -n 9; then
        say "another setup.sh is working on $venv; waiting for $lock"
        flock 9
    fi
    # Another run may have finished the job while this one waited.
    if venv_is_current; then
        say "venv $venv was completed by a concurrent run; nothing to do"
        exit 0
    fi
fi

command -v "$python" >/dev/null 2>&1 || die "$python not found; install Python >= 3.10 (Debian: apt-get install python3)"
"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
    || die "$python is $("$python" -V 2>&1); moto $moto_pin needs Python >= 3.10 (set NOMAD_ECS_PYTHON)"

# Debian splits the venv module's pip bootstrap (ensurepip) into python3-venv.
if ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        pyver="$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
        say "the venv module is missing; installing python3-venv and python$pyver-venv with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update >&2
        apt-get install -y python3-venv >&2 || true
        apt-get install -y "python$pyver-venv" >&2 || true
        "$python" -c 'import venv, ensurepip' >/dev/null 2>&1 \
            || die "python3-venv is installed but $python still lacks venv/ensurepip"
    else
        die "$python has no working venv module; install it (Debian: sudo apt-get install python3-venv) and run this again"
    fi
fi

# A venv whose interpreter no longer runs (moved, or its base python removed)
# cannot be repaired in place; recreate it. Only remove what is clearly a venv.
if [[ -e "$venv" ]] && ! "$venv/bin/python" -c '' >/dev/null 2>&1; then
    [[ -f "$venv/pyvenv.cfg" ]] || die "$venv exists but is not a venv; move it away or set NOMAD_ECS_VENV"
    say "venv $venv is broken; recreating it"
    rm -rf "$venv"
fi

if [[ ! -x "$venv/bin/python" ]]; then
    say "creating venv $venv with $("$python" -V 2>&1)"
    "$python" -m venv "$venv" >&2
fi

say "installing moto[server]==$moto_pin and boto3==$boto3_pin into $venv"
"$venv/bin/python" -m pip install --disable-pip-version-check --no-input --quiet \
    -r "$requirements" >&2

venv_is_current || die "pip finished but $venv does not report moto $moto_pin and boto3 $boto3_pin"
say "done: $venv/bin/moto_server (moto $moto_pin)"
