"""scripts/import_circles.py, the CI check that no new import circle gets in (issue 23)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "import_circles.py"


def run(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_checkout_has_no_new_circle() -> None:
    r = run(REPO)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_new_circle_fails_and_a_child_using_its_parent_does_not(tmp_path: Path) -> None:
    shutil.copytree(REPO / "src", tmp_path / "src")
    shutil.copytree(REPO / "python", tmp_path / "python")
    # A child that uses its parent is no circle.
    store = tmp_path / "src" / "store" / "sqlite" / "mod.rs"
    store.write_text(store.read_text() + "\nfn _parent() { let _ = super::validate_name; }\n")
    assert run(tmp_path).returncode == 0
    # clock.rs using the client, which uses the clock, is.
    clock = tmp_path / "src" / "clock.rs"
    clock.write_text(
        clock.read_text() + "\n#[allow(unused_imports)]\nuse crate::client::LeaseClient;\n"
    )
    r = run(tmp_path)
    assert r.returncode == 1, r.stdout
    new = [line for line in r.stdout.splitlines() if line.startswith("NEW circle")]
    assert len(new) == 1 and "src/client.rs" in new[0] and "src/clock.rs" in new[0], r.stdout
    # And in the Python package: _args importing _client, which imports _args.
    clock.write_text(clock.read_text().replace("use crate::client::LeaseClient;", ""))
    args = tmp_path / "python" / "distributed_leasing" / "_args.py"
    args.write_text(args.read_text() + "\nfrom ._client import LeaseClient  # noqa\n")
    r = run(tmp_path)
    assert r.returncode == 1, r.stdout
    assert "_args.py" in r.stdout and "_client.py" in r.stdout, r.stdout
