# Sourced by scripts/demo.sh and scripts/test.sh: picks the Python to install into.
#
# Inside a virtual environment (VIRTUAL_ENV set, or `python3` itself a venv's), that one.
# Otherwise the project's own .venv (created on first use from $PYTHON, default python3), so
# the scripts work on a system Python that refuses `pip install` (PEP 668,
# "externally-managed-environment", as on Debian 12 and Ubuntu 24.04) and never install test
# tools into it. USE_SYSTEM_PYTHON=1 installs into $PYTHON itself instead.
#
# Sets PY (the interpreter to use) and prints which one it is.

pick_python() {
    local base=${PYTHON:-python3}
    command -v "$base" >/dev/null 2>&1 || {
        echo "ERROR: $base not found: install Python 3.11 or newer (Debian/Ubuntu: apt-get install python3 python3-venv; or https://www.python.org/downloads/), or set PYTHON=/path/to/python3" >&2
        exit 1
    }
    "$base" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
        echo "ERROR: $base is Python $("$base" -c 'import platform; print(platform.python_version())'); distributed-leasing needs 3.11 or newer: install it and set PYTHON=/path/to/python3.11" >&2
        exit 1
    }
    local in_venv
    in_venv=$("$base" -c 'import sys; print(int(sys.prefix != sys.base_prefix))')
    if [[ -n ${VIRTUAL_ENV:-} || $in_venv == 1 || ${USE_SYSTEM_PYTHON:-0} == 1 ]]; then
        PY=$("$base" -c 'import sys; print(sys.executable)')
        echo "python: $PY (the active environment)"
        return
    fi
    local venv=${VENV:-$ROOT/.venv}
    if [[ ! -x $venv/bin/python ]]; then
        echo "creating a virtual environment in $venv (so nothing is installed into $base itself)"
        if ! "$base" -m venv "$venv" && [[ ${SKIP_DEPS:-0} != 1 ]] && command -v apt-get >/dev/null \
            && [[ $(id -u) == 0 ]]; then
            # Debian and Ubuntu ship the venv module separately.
            rm -rf "$venv"
            echo "installing python3-venv (apt-get)"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null || true
            "$base" -m venv "$venv" || true
        fi
        if [[ ! -x $venv/bin/python ]]; then
            rm -rf "$venv"
            echo "ERROR: '$base -m venv' failed. On Debian/Ubuntu install the venv module: apt-get install python3-venv (or python3.11-venv), then run this again" >&2
            exit 1
        fi
    fi
    PY=$venv/bin/python
    echo "python: $PY (virtual environment $venv; activate it with: source $venv/bin/activate)"
}

check_rust() {
    command -v cargo >/dev/null 2>&1 || {
        echo "ERROR: cargo not found: install Rust 1.88 or newer with rustup (https://rustup.rs: curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh), then open a new shell" >&2
        exit 1
    }
    local v
    v=$(rustc --version | awk '{print $2}')
    if [[ $(printf '%s\n1.88.0\n' "$v" | sort -V | head -1) != 1.88.0 ]]; then
        echo "ERROR: rustc $v is older than 1.88, the minimum: run 'rustup update stable'" >&2
        exit 1
    fi
}
