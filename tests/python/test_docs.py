"""The documentation runs as pasted (issue 14).

Every ```python block of README.md, docs/*.md and bench/README.md is a program: it is written to
a file in a fresh temporary directory and run there by this interpreter, in its own process (and
process group), with a timeout, once with the environment pointing the library's configuration
at a private ``redis-server`` (``RedisLeasing__ConnectionString=redis://127.0.0.1:<port>``) and
once at a SQLite file in the temporary directory. It must exit 0 within ``BLOCK_TIMEOUT``;
nothing may hang. Blocks that name their own store (``url="sqlite:///tmp/leases.db"``) use it.

A block that cannot run as a program must not be a ```python block: write it as ```text, or put
``<!-- not run: <reason> -->`` on the line right before its fence; such blocks are reported as
skipped with their reason (``pytest -rs``). Today no block is skipped: the one signature listing
(``dl.lease(name, *, url=None, ...)`` in the README) is a ```text block. A ```text or bare block
that looks like a Python program (it imports the package or calls ``asyncio.run``) is refused, so
that examples are not hidden from this test.

Also checked here: README.md stays at most ``README_MAX_LINES`` lines; every relative link (and
its ``#anchor``) in these files resolves; the copies of the ACL rules in docs/configuration.md
match the README's (which tests/python/test_tls_auth.py runs); every ``leasing ...`` and
``python examples/compete.py ...`` command in a ```bash block parses with the real argument
parsers, and ``leasing --help`` runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import re
import shlex
import signal
import subprocess
import sys
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis_servers import RedisServer

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
README_MAX_LINES = 400
BLOCK_TIMEOUT = 60.0
NOT_RUN = re.compile(r"<!--\s*not run:\s*(?P<reason>.+?)\s*-->")


def doc_files() -> list[Path]:
    return [README, *sorted((REPO / "docs").glob("*.md")), REPO / "bench" / "README.md"]


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    not_run: str | None  # the reason given by a <!-- not run: ... --> marker

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file (``` fences at the start of a line)."""
    found: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\S*)\s*$", lines[i])
        if m is None:
            i += 1
            continue
        start, lang = i, m.group(1)
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != "```":
            j += 1
        assert j < len(lines), f"{path}:{start + 1}: unclosed code fence"
        before = lines[start - 1] if start > 0 else ""
        marker = NOT_RUN.search(before)
        found.append(
            Block(
                path,
                start + 1,
                lang,
                "\n".join(lines[start + 1 : j]) + "\n",
                marker.group("reason") if marker else None,
            )
        )
        i = j + 1
    return found


def all_blocks() -> list[Block]:
    return [b for p in doc_files() if p.exists() for b in blocks(p)]


PYTHON_BLOCKS = [b for b in all_blocks() if b.lang == "python"]


# -- running the Python blocks -----------------------------------------------------------------


@pytest.fixture(scope="module")
def docs_redis() -> Iterator[RedisServer]:
    """A private Redis for the blocks of this module (killed at the end)."""
    with RedisServer() as srv:
        yield srv


def run_program(code: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Runs ``code`` as a file in ``cwd``; kills its whole process group on timeout."""
    program = cwd / "block.py"
    program.write_text(code, encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, str(program)],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=BLOCK_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(
            f"the block did not finish within {BLOCK_TIMEOUT:g} s (it hangs)\n"
            f"--- stdout\n{out}--- stderr\n{err}"
        )
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def block_env(store_url: str, tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RedisLeasing")}
    env["RedisLeasing__ConnectionString"] = store_url
    env["TMPDIR"] = str(tmp)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


@contextlib.contextmanager
def shared_file_lock(code: str) -> Iterator[None]:
    """Blocks that name the machine-wide ``/tmp/leases.db`` (as a reader would) run one at a
    time across concurrent runs of this test on one machine, so that they never meet each
    other's leases there."""
    if "sqlite:///tmp/" not in code:
        yield
        return
    with open("/tmp/distributed-leasing-docs.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@pytest.mark.parametrize("store", ["redis", "sqlite"])
@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[b.where for b in PYTHON_BLOCKS])
def test_python_block_runs_as_pasted(
    block: Block, store: str, docs_redis: RedisServer, tmp_path: Path
) -> None:
    if block.not_run is not None:
        pytest.skip(f"{block.where} is marked not run: {block.not_run}")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    url = docs_redis.url if store == "redis" else f"sqlite://{tmp_path / 'leases.db'}"
    with shared_file_lock(block.code):
        result = run_program(block.code, cwd, block_env(url, tmp_path))
    assert result.returncode == 0, (
        f"{block.where} exited with {result.returncode} on {store}\n"
        f"--- block\n{block.code}--- stdout\n{result.stdout}--- stderr\n{result.stderr}"
    )
    assert "Traceback" not in result.stderr, result.stderr


def test_there_are_python_blocks_to_run() -> None:
    where = {b.path.name for b in PYTHON_BLOCKS}
    assert {"README.md", "waiting.md", "safety.md", "configuration.md"} <= where, where


def test_no_program_hides_outside_a_python_block() -> None:
    """A Python program written as ```text (or without a language) would escape this test."""
    looks_like_python = re.compile(r"^\s*(import distributed_leasing|asyncio\.run\()", re.M)
    hidden = [
        b.where
        for b in all_blocks()
        if b.lang in ("", "text", "py", "python3", "pycon") and looks_like_python.search(b.code)
    ]
    assert not hidden, f"Python programs outside ```python blocks: {hidden}"


# -- the README's size, links, the ACL rule copies ---------------------------------------------


def test_readme_stays_short() -> None:
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, (
        f"README.md has {n} lines, more than {README_MAX_LINES}: move details to docs/"
    )


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in ("L", "N", "M"))
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    in_fence = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
            continue
        m = None if in_fence else re.match(r"^#{1,6}\s+(.*)$", line)
        if m is None:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        result.add(base if n == 0 else f"{base}-{n}")
    return result


def test_relative_links_resolve() -> None:
    broken = []
    for path in doc_files():
        text = path.read_text(encoding="utf-8")
        text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)  # not inside code blocks
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target):  # https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            if not dest.exists():
                broken.append(f"{path.relative_to(REPO)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{path.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def acl_block(path: Path, marker: str) -> str:
    text = path.read_text(encoding="utf-8")
    after = text[text.index(f"<!-- {marker}") :]
    return after.split("```text\n", 1)[1].split("```", 1)[0]


@pytest.mark.parametrize("marker", ["acl-rule", "acl-rule-cluster"])
def test_acl_rule_copies_match_the_readme(marker: str) -> None:
    copy = acl_block(REPO / "docs" / "configuration.md", f"{marker} copy")
    assert copy == acl_block(README, f"{marker}:" if marker == "acl-rule" else marker)


# -- commands in ```bash blocks ----------------------------------------------------------------


def commands(program: str) -> list[tuple[str, list[str]]]:
    """(where, argv after the program) of each ```bash line that runs ``program``."""
    found = []
    for b in all_blocks():
        if b.lang not in ("bash", "sh"):
            continue
        # one command per line, continuation lines (ending in a backslash) joined
        for k, line in enumerate(b.code.replace("\\\n", " ").splitlines()):
            if line.split()[: len(program.split())] != program.split():
                continue
            words = shlex.split(line, comments=True)
            found.append((f"{b.where}+{k + 1}", words[len(program.split()) :]))
    return found


def test_documented_leasing_commands_parse() -> None:
    from distributed_leasing import cli

    found = commands("leasing")
    assert len(found) >= 4, found
    for where, argv in found:
        try:
            cli._parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"{where}: `leasing {shlex.join(argv)}` does not parse")


def test_documented_demo_commands_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("compete", REPO / "examples" / "compete.py")
    assert spec is not None and spec.loader is not None
    compete = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "compete", compete)  # its dataclasses look it up there
    spec.loader.exec_module(compete)
    found = commands("python examples/compete.py")
    assert len(found) >= 3, found
    for where, argv in found:
        try:
            compete.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{where}: `compete.py {shlex.join(argv)}` does not parse")


def test_leasing_help_runs(tmp_path: Path) -> None:
    for argv in ([], ["inspect"], ["list"], ["release"], ["configure"]):
        out = subprocess.run(
            [sys.executable, "-m", "distributed_leasing.cli", *argv, "--help"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT,
        )
        assert out.returncode == 0 and "usage: leasing" in out.stdout, out
