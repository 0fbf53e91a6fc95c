#!/usr/bin/env bash
# Set up the locked environment (.venv, from uv.lock) and run the server or a dev task.
#
#   ./start.sh [serve] [gunicorn args...]   run the server (default)
#   ./start.sh test [pytest args...]        run the test suite
#   ./start.sh bench [args...]              run tests/benchmark.py
#   ./start.sh soak [args...]               run tests/soak.py
#   ./start.sh lint                         ruff check + ruff format --check
#
# Environment:
#   TTS_GPU=1     install onnxruntime-gpu (extra "gpu") instead of onnxruntime (extra "cpu")
#   TTS_TEST_WORKERS  pytest-xdist workers for `test` (default 3)
#   UV_VERSION    uv release bootstrapped into .tools/ when no uv is on PATH
#
# Safe to run repeatedly: when .venv already matches uv.lock, set-up is a quick no-op.
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")"

UV_VERSION="${UV_VERSION:-0.13.9}"

log() { printf 'start.sh: %s\n' "$*" >&2; }

usage() {
    cat >&2 <<'EOF'
usage: ./start.sh [COMMAND] [ARGS...]

commands:
  serve [ARGS...]   run the server under gunicorn (default; ARGS go to gunicorn)
  test  [ARGS...]   run pytest (ARGS go to pytest)
  bench [ARGS...]   run tests/benchmark.py
  soak  [ARGS...]   run tests/soak.py
  lint              ruff check . && ruff format --check .

environment:
  TTS_GPU=1         use onnxruntime-gpu (extra "gpu") instead of onnxruntime (extra "cpu")
  TTS_TEST_WORKERS  pytest-xdist workers for `test` (default 3)
EOF
}

find_uv() {
    if command -v uv >/dev/null 2>&1; then
        UV="$(command -v uv)"
        return
    fi
    UV="$PWD/.tools/bin/uv"
    if [[ -x "$UV" ]]; then
        return
    fi
    log "no uv on PATH; installing uv ${UV_VERSION} into .tools/"
    rm -rf .tools
    if python3 -m venv .tools; then
        .tools/bin/python -m pip install --quiet --disable-pip-version-check "uv==${UV_VERSION}"
    else
        # e.g. Debian's python3 without the python3-venv package: no ensurepip.
        log "python3 -m venv failed; installing uv with pip --target .tools instead"
        rm -rf .tools
        python3 -m pip install --quiet --disable-pip-version-check --target .tools "uv==${UV_VERSION}"
    fi
    log "installed $("$UV" --version)"
}

# setup [dev]: make .venv match uv.lock with the cpu (or gpu) extra, plus dev when asked.
setup() {
    local want_dev="${1:-}"
    find_uv

    local python=python3.11
    command -v "$python" >/dev/null 2>&1 || python=python3

    local -a extras
    if [[ "${TTS_GPU:-0}" == "1" ]]; then
        extras=(--extra gpu)
    else
        extras=(--extra cpu)
    fi
    if [[ "$want_dev" == "dev" ]]; then
        extras+=(--extra dev)
    fi

    log "syncing .venv (${extras[*]}) from uv.lock"
    # --compile-bytecode: uv installs sources only, and where PYTHONDONTWRITEBYTECODE is set (it
    # is on our development machines) no .pyc is ever written, so every process (each server,
    # gunicorn worker and loudness child) compiled its ~600 modules again: 1.5 s of each server's
    # start. Compiling once here takes 10 s; later runs check the files in under a second.
    UV_PYTHON_DOWNLOADS=never "$UV" sync --frozen --inexact --compile-bytecode --python "$python" "${extras[@]}"
    # The project's own modules too (they change, and a stale .pyc is simply recompiled in memory).
    .venv/bin/python -m compileall -q server tests >/dev/null
}

ensure_chromium() {
    if [[ -x /usr/bin/chromium ]]; then
        return
    fi
    if [[ "$(id -u)" != "0" ]]; then
        log "WARNING: /usr/bin/chromium is missing and we are not root, so it cannot be installed here."
        log "         Install it with: sudo apt-get install -y --no-install-recommends chromium"
        log "         (browser tests will fail or be skipped without it)"
        return
    fi
    log "installing Debian chromium (for the browser tests)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends chromium >&2
}

cmd="${1:-serve}"
[[ $# -gt 0 ]] && shift

case "$cmd" in
    serve)
        setup
        log "starting gunicorn"
        exec .venv/bin/gunicorn --config config/gunicorn.conf.py 'server.worker:create_app()' "$@"
        ;;
    test)
        setup dev
        ensure_chromium
        # Most tests wait on real server processes rather than compute, so three workers fit
        # two cores; `./start.sh test -n 0 ...` runs in one process (the last -n wins).
        exec .venv/bin/python -m pytest -n "${TTS_TEST_WORKERS:-3}" "$@"
        ;;
    bench)
        setup dev
        exec .venv/bin/python tests/benchmark.py "$@"
        ;;
    soak)
        setup dev
        exec .venv/bin/python tests/soak.py "$@"
        ;;
    lint)
        setup dev
        .venv/bin/ruff check .
        exec .venv/bin/ruff format --check .
        ;;
    -h | --help | help)
        usage
        exit 0
        ;;
    *)
        log "unknown command: $cmd"
        usage
        exit 2
        ;;
esac
