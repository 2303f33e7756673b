#!/usr/bin/env bash
# jupyter-ds-compute developer entry point.
#
#   ./dev.sh hub     set everything up, start the hub on http://127.0.0.1:8000
#   ./dev.sh test    set everything up, run the whole test suite
#   ./dev.sh setup   only set up (venv, npm build, package install)
#   ./dev.sh bench   run the benchmarks
#
# Works on a fresh Debian machine with Python 3.11 and Node 20. As root it
# also installs the Debian packages the tests need (chromium, slurm, munge).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE"

if [ "$(id -u)" = 0 ]; then
    # servers run as the users' own system accounts: the venv must be
    # world-readable, which /root (mode 700) is not
    VENV="${DS_COMPUTE_VENV:-/opt/jupyter-ds-compute/venv}"
else
    VENV="${DS_COMPUTE_VENV:-$HERE/.venv}"
fi
PY="$VENV/bin/python"
export PATH="$VENV/bin:$PATH"

log() { printf '\033[1;34m[dev]\033[0m %s\n' "$*" >&2; }

base_python() {
    for p in /usr/bin/python3.11 /usr/bin/python3 python3.11 python3; do
        if command -v "$p" >/dev/null 2>&1; then command -v "$p"; return; fi
    done
    echo "need python3 (3.10+)" >&2; exit 1
}

apt_packages() {
    # Debian packages for the real-parts tests; only as root, only if missing
    [ "$(id -u)" = 0 ] || return 0
    local want=() pkg
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || want+=("$pkg")
    done
    [ ${#want[@]} -eq 0 ] && return 0
    log "apt-get install ${want[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
}

setup_venv() {
    if [ ! -x "$PY" ]; then
        log "creating venv $VENV"
        mkdir -p "$(dirname "$VENV")"
        "$(base_python)" -m venv "$VENV"
        chmod -R a+rX "$VENV"
    fi
    # user site-packages must be visible in servers' kernels so that
    # `pip install --user` lands on the volume (PYTHONUSERBASE) and follows
    # the user from tier to tier; a venv hides them unless it sees system site
    sed -i 's/^include-system-site-packages = false/include-system-site-packages = true/' "$VENV/pyvenv.cfg"
    local stamp="$VENV/.ds-compute-deps" want
    want="$(cat setup.cfg pyproject.toml | sha256sum | cut -c1-16)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        log "installing Python dependencies into $VENV"
        "$PY" -m pip install -q -U pip wheel setuptools
        # dependencies only; the package itself comes after the Lab build
        "$PY" - <<'EOF' > "$VENV/.ds-compute-reqs.txt"
import configparser
cfg = configparser.ConfigParser()
cfg.read("setup.cfg")
reqs = cfg["options"]["install_requires"].split()
for extra in ("test", "slurm", "aws"):
    reqs += cfg["options.extras_require"][extra].split()
print("\n".join(sorted(set(reqs))))
EOF
        "$PY" -m pip install -q -r "$VENV/.ds-compute-reqs.txt" jupyter-builder
        # jsonschema's format extras pull rfc3987-syntax, which costs ~1.2 s
        # at every server start (measured); servers don't need it
        "$PY" -m pip uninstall -q -y rfc3987-syntax >/dev/null 2>&1 || true
        echo "$want" > "$stamp"
    fi
}

build_lab() {
    local stamp="node_modules/.ds-compute-lock" want
    want="$(cat package.json package-lock.json 2>/dev/null | sha256sum | cut -c1-16)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        log "npm install"
        npm install --no-audit --no-fund --loglevel=error
        echo "$want" > "$stamp"
    fi
    log "building the JupyterLab extension"
    npm run --silent build:prod >/dev/null
}

install_package() {
    log "installing jupyter-ds-compute into $VENV"
    "$PY" -m pip install -q --no-deps --no-build-isolation --force-reinstall . 2>&1 \
        | grep -v "^\s*$" || true
    rm -rf build ./*.egg-info
    chmod -R a+rX "$VENV"
}

setup() {
    setup_venv
    build_lab
    install_package
}

case "${1:-help}" in
    setup)
        setup
        ;;
    hub)
        shift
        setup
        log "starting the hub (Ctrl-C to stop)"
        exec "$VENV/bin/jupyterhub" -f "$HERE/jupyterhub_config.py" "$@"
        ;;
    test)
        shift
        apt_packages chromium
        setup
        [ -x "$HERE/tests/slurm/setup.sh" ] && "$HERE/tests/slurm/setup.sh" install
        log "running the test suite"
        exec "$PY" -m pytest "$@"
        ;;
    bench)
        shift
        setup
        for b in "${@:-benchmarks/*.py}"; do
            log "benchmark $b"
            "$PY" $b
        done
        ;;
    *)
        sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
        ;;
esac
