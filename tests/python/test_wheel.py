"""The wheels users install, installed where users install them.

The manylinux2014 x86_64 wheel (glibc >= 2.17, built with ``maturin build --release --zig``) is
installed into a fresh virtual environment (``python -m venv``, no system site packages), where
``leasing --version`` runs and the competition demo (examples/run-competition-demo.sh) passes its
five scenarios on the embedded store.

Which wheel: ``DL_WHEEL`` when set (scripts/test.sh builds the manylinux2014 wheel once and passes
it, so CI pays for no second release build); otherwise these tests build it (~5 min on 2 cores).
Skipped only when they would have to build it, zig is not installed (``pip install -r
requirements-release.txt``) and this is not CI; in CI (``CI`` set) they always run.

``WHEELS_ALL=1`` also builds the aarch64 manylinux2014 and x86_64 musllinux_1_2 wheels and a wheel
from the sdist (~5 min each) and checks them with ``auditwheel show``.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import distributed_leasing as dl
import pytest
from distributed_leasing import cli

REPO = Path(__file__).resolve().parents[2]
DEMO_SCRIPT = REPO / "examples" / "run-competition-demo.sh"
FIX_MUSL_WHEEL = REPO / "scripts" / "fix_musl_wheel.py"
BUILD_TIMEOUT = 1800  # a cold release build takes ~5 min on 2 cores; generous for a busy machine

pytestmark = pytest.mark.slow


def cargo_version() -> str:
    with (REPO / "Cargo.toml").open("rb") as f:
        version: str = tomllib.load(f)["package"]["version"]
    return version


def pep440(version: str) -> str:
    """The crate version as the wheel's metadata spells it (0.2.0-rc.1 -> 0.2.0rc1)."""
    from packaging.version import Version

    return str(Version(version))


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def zig_available() -> bool:
    return shutil.which("zig") is not None or importlib.util.find_spec("ziglang") is not None


def wheels_all() -> bool:
    return os.environ.get("WHEELS_ALL", "") == "1"


def run(
    argv: Sequence[str | Path],
    *,
    timeout: float,
    cwd: Path = REPO,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Runs a command in its own session; on timeout kills the whole session (a demo's
    instances too) and fails with what it printed."""
    proc = subprocess.Popen(
        [str(a) for a in argv],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(map(str, argv))} still running after {timeout}s:\n{out}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, None)


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child: nothing that would point it at the source tree, another
    environment or a configured store."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "DEMO_URL", "PYTHONSTARTUP")
    env = {
        k: v for k, v in os.environ.items() if k not in drop and not k.startswith("RedisLeasing__")
    }
    env["PYTHONIOENCODING"] = "utf-8"
    env.update(extra)
    return env


# -- building -------------------------------------------------------------------------------------


def ensure_rust_target(target: str) -> None:
    installed = subprocess.run(
        ["rustup", "target", "list", "--installed"], capture_output=True, text=True, check=True
    ).stdout.split()
    if target not in installed:
        got = run(["rustup", "target", "add", target], timeout=600)
        assert got.returncode == 0, f"rustup target add {target} failed:\n{got.stdout}"


def maturin_build(out: Path, compatibility: str, target: str | None = None) -> Path:
    """``maturin build --release --zig``: returns the one wheel it wrote into ``out``."""
    argv: list[str | Path] = [sys.executable, "-m", "maturin", "build", "--release", "--zig"]
    argv += ["--compatibility", compatibility, "--out", out, "--interpreter", sys.executable]
    if target is not None:
        ensure_rust_target(target)
        argv += ["--target", target]
    got = run(argv, timeout=BUILD_TIMEOUT)
    assert got.returncode == 0, f"maturin build failed:\n{got.stdout}"
    (wheel,) = out.glob("*.whl")
    if compatibility.startswith("musllinux"):
        # zig links musl as libc.so; the name auditwheel accepts (docs/wheels.md)
        got = run([sys.executable, FIX_MUSL_WHEEL, wheel], timeout=120)
        assert got.returncode == 0, got.stdout
        assert "NEEDED libc.so -> libc.musl-" in got.stdout, got.stdout
    return wheel


@pytest.fixture(scope="module")
def manylinux_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("DL_WHEEL")
    if given:
        wheel = Path(given).resolve()
        assert wheel.is_file(), f"DL_WHEEL={given} does not exist"
        return wheel
    if not zig_available():
        if in_ci():
            pytest.fail("zig is missing in CI: pip install -r requirements-release.txt")
        pytest.skip("no DL_WHEEL and no zig to build one (pip install -r requirements-release.txt)")
    return maturin_build(tmp_path_factory.mktemp("wheel"), "manylinux2014")


# -- checking a wheel ---------------------------------------------------------------------------


def auditwheel_show(wheel: Path) -> dict[str, Any]:
    """Prints ``auditwheel show`` (pytest -s shows it) and returns its ``--json`` report."""
    argv = [sys.executable, "-m", "auditwheel", "show"]
    text = run([*argv, wheel], timeout=120)
    assert text.returncode == 0, text.stdout
    print(text.stdout)
    got = subprocess.run(
        [*argv, "--json", str(wheel)], capture_output=True, text=True, timeout=120, check=True
    )
    report: dict[str, Any] = json.loads(got.stdout)
    return report


# Debian's `musl` package: musl's dynamic loader (and shared libc).
MUSL_LOADER = Path("/lib/ld-musl-x86_64.so.1")


def check_musl_extension(platform_tag: str, so: Path, *, needs_python: bool = True) -> None:
    """The extension needs musl by the soname Alpine gives it, ``libc.musl-<arch>.so.1``
    (scripts/fix_musl_wheel.py: zig links it as ``libc.so``, which auditwheel refuses). musl's
    dynamic loader takes any ``libc.*`` name for itself: on this machine (Debian's ``musl``
    package) it must resolve that name to itself and every symbol but Python's."""
    arch = platform_tag.removeprefix("musllinux_1_2_")
    soname = f"libc.musl-{arch}.so.1"
    from elftools.elf.dynamic import DynamicSection
    from elftools.elf.elffile import ELFFile

    with so.open("rb") as f:
        dynamic = ELFFile(f).get_section_by_name(".dynamic")
        assert isinstance(dynamic, DynamicSection)
        needed = [t.needed for t in dynamic.iter_tags() if t.entry.d_tag == "DT_NEEDED"]
    assert soname in needed and "libc.so" not in needed, needed
    if not (MUSL_LOADER.exists() and arch == "x86_64"):
        return
    got = run([MUSL_LOADER, "--list", so], timeout=60)
    assert f"{soname} => {MUSL_LOADER} " in got.stdout, got.stdout
    unresolved = re.findall(r"Error relocating [^:]*: (\S+): symbol not found", got.stdout)
    assert all(name.startswith(("Py", "_Py")) for name in unresolved), got.stdout
    assert bool(unresolved) == needs_python, got.stdout


@dataclass
class Elf:
    machine: str
    sections: list[str]


def read_elf(data: bytes) -> Elf:
    from elftools.elf.elffile import ELFFile  # (pyelftools: auditwheel's)

    elf = ELFFile(io.BytesIO(data))
    return Elf(str(elf["e_machine"]), [s.name for s in elf.iter_sections()])


def sha256_digest(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def check_record(z: zipfile.ZipFile, record: str) -> None:
    """RECORD lists every file of the wheel with its sha256 and size (pip checks them)."""
    listed = {}
    for name, digest, size in csv.reader(io.StringIO(z.read(record).decode())):
        listed[name] = (digest, size)
        if name == record:
            continue
        data = z.read(name)
        assert (digest, size) == (sha256_digest(data), str(len(data))), name
    assert set(listed) == set(z.namelist())


def check_wheel(wheel: Path, platform_tag: str, machine: str, tmp: Path) -> None:
    """The file name's tags, what auditwheel says, a stripped extension for ``machine``, and
    the files a user needs (typing stubs, the CLI, the license)."""
    version = pep440(cargo_version())
    assert wheel.name.startswith(f"distributed_leasing-{version}-cp311-abi3-"), wheel.name
    assert wheel.name.endswith(f"{platform_tag}.whl"), wheel.name
    musl = platform_tag.startswith("musllinux")
    report = auditwheel_show(wheel)
    assert report["overall_tag"] == platform_tag, report
    assert report["external_libs"] == {}, report
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        dist_info = f"distributed_leasing-{version}.dist-info"
        for name in (
            "distributed_leasing/__init__.py",
            "distributed_leasing/cli.py",
            "distributed_leasing/_native.pyi",
            "distributed_leasing/py.typed",
            f"{dist_info}/licenses/LICENSE",
            f"{dist_info}/entry_points.txt",
        ):
            assert name in names, f"{name} missing from {wheel.name}"
        entry_points = z.read(f"{dist_info}/entry_points.txt").decode().replace(" ", "")
        assert "[console_scripts]\nleasing=distributed_leasing.cli:main\n" in entry_points
        metadata = z.read(f"{dist_info}/METADATA").decode()
        assert f"\nVersion: {version}\n" in metadata
        check_record(z, f"{dist_info}/RECORD")
        assert "\nLicense-Expression: MIT\n" in metadata
        (so,) = (n for n in names if n.startswith("distributed_leasing/_native") and ".so" in n)
        so_path = Path(z.extract(so, tmp))
    elf = read_elf(so_path.read_bytes())
    assert elf.machine == machine
    assert ".symtab" not in elf.sections, "the extension is not stripped"
    assert not any(s.startswith(".debug") for s in elf.sections), "debug info in the wheel"
    if musl:
        check_musl_extension(platform_tag, so_path)


def write_wheel(wheel: Path, files: dict[str, bytes]) -> None:
    """A minimal wheel of ``files`` (name-version from the file name), with its RECORD."""
    name, version, *_, platform = wheel.stem.split("-")
    dist_info = f"{name}-{version}.dist-info"
    files = {
        **files,
        f"{dist_info}/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
        ),
        f"{dist_info}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: test_wheel\nRoot-Is-Purelib: false\n"
            f"Tag: cp311-abi3-{platform}\n"
        ).encode(),
    }
    record = "".join(f"{n},{sha256_digest(d)},{len(d)}\n" for n, d in files.items())
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        for n, d in files.items():
            z.writestr(n, d)
        z.writestr(f"{dist_info}/RECORD", record + f"{dist_info}/RECORD,,\n")


def test_fix_musl_wheel_gives_the_soname_auditwheel_accepts(tmp_path: Path) -> None:
    """scripts/fix_musl_wheel.py on a small extension that zig links for musl as it links ours
    (``libc.so``); the real musllinux wheel is built and checked with ``WHEELS_ALL=1``."""
    if not zig_available():
        if in_ci():
            pytest.fail("zig is missing in CI: pip install -r requirements-release.txt")
        pytest.skip("no zig (pip install -r requirements-release.txt)")
    source = tmp_path / "ext.c"
    source.write_text("#include <string.h>\nsize_t dl_len(const char *s) { return strlen(s); }\n")
    so = tmp_path / "_native.abi3.so"
    zig_cc = [sys.executable, "-m", "ziglang", "cc", "-target", "x86_64-linux-musl", "-shared"]
    got = run([*zig_cc, "-fPIC", "-o", so, source], timeout=600)
    assert got.returncode == 0, got.stdout
    wheel = tmp_path / "demo-1.0-cp311-abi3-musllinux_1_2_x86_64.whl"
    write_wheel(wheel, {"demo/__init__.py": b"", "demo/_native.abi3.so": so.read_bytes()})

    got = run([sys.executable, FIX_MUSL_WHEEL, wheel], timeout=120)
    assert got.returncode == 0, got.stdout
    assert (
        got.stdout
        == f"{wheel.name}: demo/_native.abi3.so: NEEDED libc.so -> libc.musl-x86_64.so.1\n"
    )
    report = auditwheel_show(wheel)
    assert report["overall_tag"] == "musllinux_1_2_x86_64", report
    assert report["external_libs"] == {}, report
    with zipfile.ZipFile(wheel) as z:
        check_record(z, "demo-1.0.dist-info/RECORD")
        patched = Path(z.extract("demo/_native.abi3.so", tmp_path / "unpacked"))
    check_musl_extension("musllinux_1_2_x86_64", patched, needs_python=False)
    # A second run finds nothing to change.
    got = run([sys.executable, FIX_MUSL_WHEEL, wheel], timeout=120)
    assert (got.returncode, got.stdout) == (0, f"{wheel.name}: nothing to change\n")


# -- the manylinux2014 wheel in a fresh virtual environment ---------------------------------------


@dataclass
class Venv:
    root: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def leasing(self) -> Path:
        return self.root / "bin" / "leasing"


def fresh_venv(root: Path, wheel: Path) -> Venv:
    """``python -m venv`` (no system site packages), then the wheel alone: no index, no deps."""
    # From the base interpreter: a venv made from inside another venv is still a fresh one, but
    # say what is meant.
    base = getattr(sys, "_base_executable", sys.executable)
    got = run([base, "-m", "venv", root], timeout=300)
    assert got.returncode == 0, got.stdout
    venv = Venv(root)
    got = run(
        [venv.python, "-m", "pip", "install", "--no-index", "--no-deps", "-q", wheel],
        timeout=300,
        env=child_env(PIP_DISABLE_PIP_VERSION_CHECK="1"),
    )
    assert got.returncode == 0, got.stdout
    return venv


@pytest.fixture(scope="module")
def venv(manylinux_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    return fresh_venv(tmp_path_factory.mktemp("venv") / "venv", manylinux_wheel)


def test_manylinux_wheel_tags_contents_and_strip(manylinux_wheel: Path, tmp_path: Path) -> None:
    check_wheel(manylinux_wheel, "manylinux_2_17_x86_64", "EM_X86_64", tmp_path)
    # abi3: one wheel for every CPython >= 3.11; manylinux2014 and its PEP 600 alias.
    assert "-cp311-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.whl" in manylinux_wheel.name


def test_the_venv_is_fresh_and_imports_the_installed_wheel(venv: Venv, tmp_path: Path) -> None:
    probe = (
        "import sys, importlib.util, importlib.metadata as md, distributed_leasing as dl\n"
        "print(sys.prefix != sys.base_prefix)\n"
        "print(importlib.util.find_spec('pytest') is None)\n"  # no system site packages
        "print(dl.__file__)\n"
        "print(dl.__version__)\n"
        "print(md.version('distributed-leasing'))\n"
    )
    got = run([venv.python, "-c", probe], timeout=60, cwd=tmp_path, env=child_env())
    assert got.returncode == 0, got.stdout
    in_venv, isolated, location, version, metadata_version = got.stdout.splitlines()
    assert in_venv == "True"
    assert isolated == "True", "the venv sees the system's site packages"
    assert Path(location).is_relative_to(venv.root), location
    assert version == cargo_version()
    assert metadata_version == pep440(cargo_version())


def test_leasing_version_and_a_command_from_the_wheel(venv: Venv, tmp_path: Path) -> None:
    got = run([venv.leasing, "--version"], timeout=60, cwd=tmp_path, env=child_env())
    assert got.returncode == 0, got.stdout
    assert got.stdout == f"leasing (distributed-leasing) {cargo_version()}\n"
    url = f"sqlite://{tmp_path}/leases.db"
    got = run([venv.leasing, "--url", url, "list"], timeout=60, cwd=tmp_path, env=child_env())
    assert (got.returncode, got.stdout) == (0, "No leases held.\n")


def test_the_competition_demo_passes_on_the_installed_wheel(venv: Venv, tmp_path: Path) -> None:
    # Run as scripts/demo.sh runs it (after installing): the scenario script with PYTHON set,
    # here the venv's interpreter; nothing configured and not in a git repository, so the
    # embedded store in ./.leases of the working directory.
    work = tmp_path / "demo"
    work.mkdir()
    got = run(["bash", DEMO_SCRIPT], timeout=240, cwd=work, env=child_env(PYTHON=str(venv.python)))
    out = got.stdout
    assert got.returncode == 0, out
    verdicts = [line for line in out.splitlines() if line.startswith("Scenario ")]
    assert [v.split(" — ")[0] for v in verdicts] == [
        "Scenario 1 (simultaneous start): PASS",
        "Scenario 2 (takeover): PASS",
        "Scenario 3 (three regions): PASS",
        "Scenario 4 (expiry): PASS",
        "Scenario 5 (leader election): PASS",
    ], out
    assert verdicts[0].endswith("1 winner, 1 loser")
    assert verdicts[2].endswith("1 winner, 2 losers")
    assert out.rstrip().endswith("All scenarios passed")
    assert "DISTRIBUTED LOCK DEMO - SQLITE (embedded, this machine only)" in out
    db = work / ".leases" / "leases.db"
    assert f"using the embedded store sqlite://{db} " in out
    assert db.is_file()
    assert "✓ Lock acquired" in out and "✗ Lock unavailable | Held by:" in out
    assert "Traceback" not in out


# -- version, in process (no build) ---------------------------------------------------------------


def test_version_is_the_crate_version_everywhere(capsys: pytest.CaptureFixture[str]) -> None:
    assert dl.__version__ == cargo_version()
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"leasing (distributed-leasing) {cargo_version()}\n"


# -- the sdist ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sdist")
    got = run([sys.executable, "-m", "maturin", "sdist", "--out", out], timeout=300)
    assert got.returncode == 0, got.stdout
    (archive,) = out.glob("*.tar.gz")
    return archive


def tracked(*pathspecs: str) -> set[str]:
    """Files of the repository under ``pathspecs`` (what is committed, or on disk outside git)."""
    if (REPO / ".git").exists() and shutil.which("git"):
        got = subprocess.run(
            ["git", "ls-files", "--", *pathspecs],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
        return {line for line in got.stdout.splitlines() if (REPO / line).is_file()}
    return {
        str(p.relative_to(REPO))
        for spec in pathspecs
        for p in (REPO / spec).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".so", ".pyc")
    }


def test_sdist_has_everything_a_build_needs(sdist: Path) -> None:
    version = pep440(cargo_version())
    prefix = f"distributed_leasing-{version}/"
    assert sdist.name == f"distributed_leasing-{version}.tar.gz"
    with tarfile.open(sdist) as tar:
        members = {m.name.removeprefix(prefix) for m in tar.getmembers() if m.isfile()}
        pkg_info = tar.extractfile(prefix + "PKG-INFO")
        assert pkg_info is not None
        metadata = pkg_info.read().decode()
    needed = {"Cargo.toml", "Cargo.lock", "pyproject.toml", "README.md", "LICENSE", "PKG-INFO"}
    needed |= tracked("src", "python")  # every .rs and .lua file, the whole Python package
    assert any(name.endswith(".lua") for name in needed)
    missing = sorted(needed - members)
    assert not missing, f"missing from the sdist: {missing}"
    assert not [m for m in members if m.startswith(("target/", "dist/")) or m.endswith(".so")]
    assert f"\nVersion: {version}\n" in metadata
    assert "\nLicense-Expression: MIT\n" in metadata
    assert "\nLicense-File: LICENSE\n" in metadata


# -- the other wheels (WHEELS_ALL=1) ------------------------------------------------------------

needs_wheels_all = pytest.mark.skipif(
    not wheels_all(), reason="WHEELS_ALL=1 builds the other wheels (~5 min each)"
)


@needs_wheels_all
@pytest.mark.parametrize(
    ("target", "compatibility", "platform_tag", "machine"),
    [
        ("aarch64-unknown-linux-gnu", "manylinux2014", "manylinux_2_17_aarch64", "EM_AARCH64"),
        ("x86_64-unknown-linux-musl", "musllinux_1_2", "musllinux_1_2_x86_64", "EM_X86_64"),
    ],
    ids=["manylinux2014-aarch64", "musllinux_1_2-x86_64"],
)
def test_cross_built_wheel(
    tmp_path: Path, target: str, compatibility: str, platform_tag: str, machine: str
) -> None:
    if not zig_available():
        pytest.fail("WHEELS_ALL=1 needs zig: pip install -r requirements-release.txt")
    wheel = maturin_build(tmp_path / "out", compatibility, target)
    check_wheel(wheel, platform_tag, machine, tmp_path)


@needs_wheels_all
def test_the_sdist_builds_a_wheel_that_works(sdist: Path, tmp_path: Path) -> None:
    # As pip builds it for a user without a matching wheel: isolated build environment (maturin
    # from the index), a fresh target directory.
    out = tmp_path / "wheels"
    env = child_env(PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("CARGO_TARGET_DIR", None)
    got = run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", out, sdist],
        timeout=BUILD_TIMEOUT,
        cwd=tmp_path,
        env=env,
    )
    assert got.returncode == 0, got.stdout
    (wheel,) = out.glob("*.whl")
    venv = fresh_venv(tmp_path / "venv", wheel)
    got = run([venv.leasing, "--version"], timeout=60, cwd=tmp_path, env=child_env())
    assert got.stdout == f"leasing (distributed-leasing) {cargo_version()}\n", got.stdout


@needs_wheels_all
def test_pip_wheel_tags(tmp_path: Path) -> None:
    # maturin's PEP 517 backend asks maturin for `--compatibility off` unless given arguments:
    # `pip wheel .` is for this machine only (linux_x86_64, which PyPI refuses); with
    # `--compatibility pypi` maturin checks the extension and tags it with the manylinux
    # version this machine's glibc gives (docs/wheels.md, "pip wheel and pip install").
    env = child_env(PIP_DISABLE_PIP_VERSION_CHECK="1")
    tags = {}
    for name, extra in (("plain", []), ("pypi", ["-C", "maturin.build-args=--compatibility pypi"])):
        out = tmp_path / name
        argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", out, *extra, REPO]
        got = run(argv, timeout=BUILD_TIMEOUT, cwd=tmp_path, env=env)
        assert got.returncode == 0, got.stdout
        (wheel,) = out.glob("*.whl")
        tags[name] = wheel.name.split("-cp311-abi3-")[1].removesuffix(".whl")
    assert tags["plain"] == "linux_x86_64"
    assert re.fullmatch(r"manylinux_2_\d+_x86_64", tags["pypi"]), tags
    (wheel,) = (tmp_path / "pypi").glob("*.whl")
    report = auditwheel_show(wheel)
    assert report["overall_tag"] == tags["pypi"], report
    assert report["external_libs"] == {}, report
