"""Fakes for Microsoft Entra ID tests: an ``az`` executable and a clean environment.

``FakeAz`` writes a POSIX shell script named ``az`` that answers only
``az account get-access-token -o json --scope https://redis.azure.com/.default`` (what
azure_identity's AzureCliCredential runs, as ``/bin/sh -c "cd /bin && az ..."``, so every path
inside is absolute). Each call mints a JWT-shaped token (``alg: none``) whose ``oid`` claim is
``oid``, valid for ``lifetime`` seconds, and, with ``redis_port``, makes it the only password of
the Redis ACL user named ``oid`` (``ACL SETUSER <oid> on resetpass ><token> ~* &* +@all``)
before printing it, as Azure would accept only a current token. Tokens are appended to
``state/tokens``, one a line.

``azure_free_env`` is the environment for a child process that must not reach anything but the
fakes: no ``AZURE_*``, ``IDENTITY_*``, ``MSI_*``, ``IMDS_*`` or ``RedisLeasing*`` variable, and the
fake's directory first on PATH.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path

SCOPE = "https://redis.azure.com/.default"
DEFAULT_OID = "0b9d3c2a-6e1f-4a7b-8c5d-9e0f1a2b3c4d"
_CLEARED_PREFIXES = ("AZURE_", "IDENTITY_", "MSI_", "IMDS_", "REDISLEASING")


class FakeAz:
    def __init__(
        self,
        directory: Path,
        *,
        redis_port: int | None,
        oid: str = DEFAULT_OID,
        lifetime: int = 6,
        redis_cli: Sequence[str] | None = None,
    ) -> None:
        """``redis_cli``: the redis-cli command with its connection flags (for a TLS server,
        ``RedisServer.cli_args()``); by default ``redis-cli -h 127.0.0.1 -p <redis_port>``."""
        self.bin = directory / "bin"
        self.state = directory / "state"
        self.oid = oid
        self.bin.mkdir(parents=True, exist_ok=True)
        self.state.mkdir(parents=True, exist_ok=True)
        if redis_port is None:
            rotate = ":"
        else:
            if redis_cli is None:
                exe = shutil.which("redis-cli") or "redis-cli"
                redis_cli = [exe, "-h", "127.0.0.1", "-p", str(redis_port)]
            cli = shlex.join(redis_cli)
            rotate = (
                f"out=$({cli} ACL SETUSER '{oid}' on resetpass "
                f"\">$token\" '~*' '&*' '+@all')\n"
                '[ "$out" = OK ] || { echo "fake az: ACL SETUSER failed: $out" >&2; exit 1; }'
            )
        script = f"""#!/bin/sh
# Fake Azure CLI (tests): only "az account get-access-token -o json --scope {SCOPE}".
case "$*" in
  "account get-access-token -o json --scope {SCOPE}") ;;
  *) echo "fake az: unexpected arguments: $*" >&2; exit 2 ;;
esac
STATE='{self.state}'
echo "$*" >> "$STATE/calls"
n=$(( $(cat "$STATE/count" 2>/dev/null || echo 0) + 1 ))
exp=$(( $(date +%s) + {lifetime} ))
b64() {{ base64 | tr -d '\\n=' | tr '+/' '-_'; }}
head=$(printf '%s' '{{"alg":"none","typ":"JWT"}}' | b64)
claims='{{"aud":"https://redis.azure.com","oid":"%s","n":%s,"exp":%s}}'
body=$(printf "$claims" '{oid}' "$n" "$exp" | b64)
sig=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \\n')
token="$head.$body.$sig"
{rotate}
echo "$token" >> "$STATE/tokens"
echo "$n" > "$STATE/count"
printf '{{"accessToken": "%s", "expires_on": %s, "tokenType": "Bearer"}}\\n' "$token" "$exp"
"""
        self.path = self.bin / "az"
        self.path.write_text(script)
        self.path.chmod(self.path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    def tokens(self) -> list[str]:
        try:
            return (self.state / "tokens").read_text().split()
        except FileNotFoundError:
            return []

    def calls(self) -> list[str]:
        try:
            return (self.state / "calls").read_text().splitlines()
        except FileNotFoundError:
            return []


def azure_free_env(
    path_first: Path | None = None, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    env = {
        k: v
        for k, v in (os.environ if base is None else base).items()
        if not k.upper().startswith(_CLEARED_PREFIXES)
    }
    if path_first is not None:
        env["PATH"] = f"{path_first}{os.pathsep}{env.get('PATH', '')}"
    return env
