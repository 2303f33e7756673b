#!/usr/bin/env bash
# jupyter-ds-compute developer entry point.
#
#   ./dev.sh hub     set everything up, start the hub on http://127.0.0.1:8000
#   ./dev.sh test    set everything up, run the whole test suite
#   ./dev.sh setup   only set up (venv, npm build, package install)
#   ./dev.sh develop set up with an editable install (code changes take effect
#                    without reinstalling; for working on the project)
#   ./dev.sh lint    check Python (ruff) and TypeScript (eslint, prettier) style
#   ./dev.sh bench   run the benchmarks
#
# Works on a fresh Debian machine with Python 3.11 and Node 20. Everything the
# hub runs is installed here: Python packages into the venv, JupyterHub's proxy
# (configurable-http-proxy) and the Lab build tools into ./node_modules, and,
# as root, the Debian packages the tests need (chromium, slurm, munge).
# DS_COMPUTE_VENV chooses the venv (.ci/run uses a new one every run).
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
    # node_modules holds the Lab build tools and JupyterHub's proxy
    # (node_modules/.bin/configurable-http-proxy, found by jupyterhub_config.py)
    local stamp="node_modules/.ds-compute-lock" want
    want="$(cat package.json package-lock.json 2>/dev/null | sha256sum | cut -c1-16)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        log "npm ci"
        if ! npm ci --no-audit --no-fund --loglevel=error; then
            if [ -n "${CI:-}" ]; then
                echo "package-lock.json does not match package.json: run 'npm install' and commit the lock" >&2
                exit 1
            fi
            log "package-lock.json is out of date: npm install (commit the updated lock)"
            npm install --no-audit --no-fund --loglevel=error
        fi
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

install_editable() {
    # pip install -e installs no data_files: link the Lab extension and copy
    # the server extension's config by hand (see docs/internals.md)
    log "installing jupyter-ds-compute into $VENV (editable)"
    "$PY" -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v "^\s*$" || true
    "$VENV/bin/jupyter-builder" develop --overwrite . >/dev/null
    mkdir -p "$VENV/etc/jupyter/jupyter_server_config.d"
    cp jupyter-config/server-config/jupyter_ds_compute.json "$VENV/etc/jupyter/jupyter_server_config.d/"
    chmod -R a+rX "$VENV"
}

lint() {
    log "Python lint and format (ruff)"
    "$VENV/bin/ruff" check .
    "$VENV/bin/ruff" format --check .
    log "TypeScript lint and format (eslint, prettier, stylelint)"
    npm run -s lint:check
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
    develop)
        setup_venv
        build_lab
        install_editable
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
        if [ $# -eq 0 ]; then
            lint
            log "TypeScript unit tests (node --test)"
            npm run -s test:ts
        fi
        log "running the test suite"
        exec "$PY" -m pytest "$@"
        ;;
    lint)
        setup_venv
        build_lab
        lint
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
        sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
        ;;
esac
