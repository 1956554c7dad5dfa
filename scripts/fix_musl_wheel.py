#!/usr/bin/env python3
"""Gives a musllinux wheel's extension the libc soname auditwheel accepts, in place.

    python scripts/fix_musl_wheel.py dist/*musllinux*.whl

zig (``maturin build --zig``) and the musl cross toolchains link the extension against musl's
own soname, ``libc.so``. Alpine's musl, and auditwheel's musllinux policy, name it
``libc.musl-<arch>.so.1`` (``auditwheel show`` objects to ``libc.so``). musl's dynamic loader
takes any ``libc.*`` name for itself, so both load; this rewrites the NEEDED entry of every
``.so`` in the wheel with ``patchelf --replace-needed libc.so libc.musl-<arch>.so.1`` and
rewrites the wheel, each file's RECORD line (sha256, size) included. Wheels that are not
musllinux, and extensions that do not need ``libc.so``, are left alone. Needs patchelf on PATH
(``pip install -r requirements-release.txt``).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

USAGE = "usage: python scripts/fix_musl_wheel.py WHEEL..."
ZIG_SONAME = "libc.so"
# The wheel's architecture (its platform tag) -> the one in Alpine's musl soname.
MUSL_ARCH = {"x86_64": "x86_64", "aarch64": "aarch64", "armv7l": "armv7", "i686": "x86"}


def musl_soname(wheel: Path) -> str | None:
    """``libc.musl-<arch>.so.1`` for a musllinux wheel, else None."""
    m = re.search(r"-musllinux_\d+_\d+_([a-z0-9_]+)\.whl$", wheel.name)
    if m is None:
        return None
    arch = m.group(1)
    if arch not in MUSL_ARCH:
        raise SystemExit(f"{wheel.name}: no known musl soname for {arch}")
    return f"libc.musl-{MUSL_ARCH[arch]}.so.1"


def patchelf() -> str:
    """patchelf next to this Python's scripts (pip's patchelf wheel), else on PATH."""
    here = Path(sysconfig.get_path("scripts")) / "patchelf"
    found = str(here) if here.is_file() else shutil.which("patchelf")
    if found is None:
        raise SystemExit("patchelf not found: pip install -r requirements-release.txt")
    return found


def needed(so: Path) -> list[str]:
    got = subprocess.run(
        [patchelf(), "--print-needed", str(so)], capture_output=True, text=True, check=True
    )
    return got.stdout.split()


def record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def new_record(record: str, patched: dict[str, bytes]) -> bytes:
    """RECORD with the hash and size of each patched file replaced."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for row in csv.reader(io.StringIO(record)):
        if row and row[0] in patched:
            data = patched[row[0]]
            row = [row[0], record_hash(data), str(len(data))]
        writer.writerow(row)
    return out.getvalue().encode()


def fix(wheel: Path) -> bool:
    """Rewrites ``wheel`` if an extension in it needs ``libc.so``; True when it did."""
    soname = musl_soname(wheel)
    if soname is None:
        return False
    patched: dict[str, bytes] = {}
    with zipfile.ZipFile(wheel) as z, tempfile.TemporaryDirectory() as tmp:
        for info in z.infolist():
            if not re.search(r"\.so(\.|$)", info.filename):
                continue
            so = Path(z.extract(info, tmp))
            if ZIG_SONAME not in needed(so):
                continue
            subprocess.run(
                [patchelf(), "--replace-needed", ZIG_SONAME, soname, str(so)], check=True
            )
            now = needed(so)
            assert ZIG_SONAME not in now and soname in now, now
            patched[info.filename] = so.read_bytes()
    if not patched:
        return False
    rewritten = wheel.with_name(wheel.name + ".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(rewritten, "w") as dst:
        record = next(i for i in src.infolist() if i.filename.endswith(".dist-info/RECORD"))
        for info in src.infolist():  # same order, names, dates, permissions, compression
            if info.filename == record.filename:
                data = new_record(src.read(record).decode(), patched)
            else:
                data = patched.get(info.filename) or src.read(info)
            dst.writestr(info, data, compress_type=info.compress_type)
    os.replace(rewritten, wheel)
    for name in patched:
        print(f"{wheel.name}: {name}: NEEDED {ZIG_SONAME} -> {soname}")
    return True


def main(argv: list[str]) -> int:
    if not argv:
        print(USAGE, file=sys.stderr)
        return 2
    for arg in argv:
        wheel = Path(arg)
        if not fix(wheel):
            print(f"{wheel.name}: nothing to change")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
