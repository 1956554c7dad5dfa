"""Bad input (issue #7): fuzzed arguments of the Python API, someone else's key at the lease
name, and metadata full of separators.

Every refusal must be a typed error with a useful message (ValueError, TypeError or a LeaseError
subclass), never a crash, a hang or another exception type.
"""

from __future__ import annotations

import asyncio
import math
import re
import string
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import distributed_leasing as dl
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from redis_servers import RedisServer

TYPED = (ValueError, TypeError, dl.LeaseError)

# ------------------------------------------------------------------------------------------
# Someone else's key at the lease name
# ------------------------------------------------------------------------------------------

FOREIGN = {
    "string": (["SET", "{key}", "someone else's data"], ["GET", "{key}"]),
    "list": (["RPUSH", "{key}", "a", "b"], ["LRANGE", "{key}", "0", "-1"]),
    "set": (["SADD", "{key}", "member"], ["SMEMBERS", "{key}"]),
}


def assert_wrong_type(err: dl.BackendError, key: str) -> None:
    assert err.kind == "wrong_type", err
    message = str(err)
    assert key in message
    assert "left untouched" in message and "choose another lease name" in message


@pytest.mark.parametrize("kind", sorted(FOREIGN))
def test_foreign_key_type_is_refused_on_every_path_and_left_untouched(
    redis_server: RedisServer, unique_name: str, kind: str
) -> None:
    key = f"lease:{unique_name}"
    write, read = ([a.format(key=key) for a in cmd] for cmd in FOREIGN[kind])
    client = dl.LeaseClient.connect_sync(redis_server.url)
    # A lease is held, then someone else's data replaces its key: the holder's release must
    # refuse to touch it, as must everyone's acquire, inspect and force_release; the holder's
    # renewal finds its lease gone (lost, `missing`: issue 22) and leaves the data alone too.
    lease = client.acquire_sync(unique_name, duration=30.0)
    redis_server.cli("DEL", key)
    redis_server.cli(*write)
    before = redis_server.cli(*read)

    for call in (
        lambda: client.acquire_sync(unique_name),
        lambda: client.try_acquire_sync(unique_name),
        lambda: client.inspect_sync(unique_name),
        lambda: client.force_release_sync(unique_name),
        lease.release_sync,
    ):
        with pytest.raises(dl.BackendError) as info:
            call()
        assert_wrong_type(info.value, key)
        assert redis_server.cli(*read) == before
        assert redis_server.cli("TTL", key).strip() == "-1"
    with pytest.raises(dl.LeaseLost) as lost:
        lease.renew_sync()
    assert lost.value.reason == "missing"
    assert redis_server.cli(*read) == before
    assert redis_server.cli("TTL", key).strip() == "-1"
    # list() skips keys that are not leases instead of failing.
    assert [i.name for i in client.list_sync(unique_name)] == []
    assert redis_server.cli(*read) == before


async def test_foreign_key_type_async_paths(redis_server: RedisServer, unique_name: str) -> None:
    key = f"lease:{unique_name}"
    client = await dl.LeaseClient.connect(redis_server.url)
    lease = await client.acquire(unique_name, duration=30.0)
    redis_server.cli("DEL", key)
    redis_server.cli("SET", key, "someone else's data")
    # One at a time: the library's awaitables start when created, and a release running
    # together with the renew would end the lease first.
    for start in (
        lambda: client.inspect(unique_name),
        lambda: client.force_release(unique_name),
        lease.release,
    ):
        with pytest.raises(dl.BackendError) as info:
            await start()
        assert_wrong_type(info.value, key)
    with pytest.raises(dl.LeaseLost) as lost:
        await lease.renew()
    assert lost.value.reason == "missing"
    assert redis_server.cli("GET", key).strip() == "someone else's data"


@pytest.mark.parametrize(
    ("write", "read"),
    [
        (["HSET", "{fence}", "field", "value"], ["HGETALL", "{fence}"]),
        (["SET", "{fence}", "not a number"], ["GET", "{fence}"]),
        (["SET", "{fence}", str(2**63 - 1)], ["GET", "{fence}"]),  # INCR would overflow
    ],
)
def test_foreign_fencing_counter_is_refused_naming_it_without_touching_anything(
    redis_server: RedisServer, unique_name: str, write: list[str], read: list[str]
) -> None:
    key = f"lease:{unique_name}"
    fence = f"{key}:fence"
    redis_server.cli(*(a.format(fence=fence) for a in write))
    before = redis_server.cli(*(a.format(fence=fence) for a in read))
    client = dl.LeaseClient.connect_sync(redis_server.url)
    with pytest.raises(dl.BackendError) as info:
        client.acquire_sync(unique_name)
    assert info.value.kind == "wrong_type", info.value
    assert f"'{fence}'" in str(info.value)
    assert "fencing counter" in str(info.value)
    assert redis_server.cli("EXISTS", key).strip() == "0"
    assert redis_server.cli(*(a.format(fence=fence) for a in read)) == before


# ------------------------------------------------------------------------------------------
# Metadata that a naive encoding would mangle
# ------------------------------------------------------------------------------------------

TRICKY_METADATA = {
    "a=b": "c=d,e=f",
    "comma,key": "",
    "multi": "line one\nline two\r\n\ttabbed",
    "unicode ключ 🔑": "值 🔒 \u0000 nul \u2028 sep",
    "json": '{"x": [1, 2], "y": "z"}',
    "quote'\"": "\\backslash\\ and 'quotes' \"",
    "spaces  ": "  leading and trailing  ",
    "meta_nested": "meta_value",
}


@pytest.fixture(params=["redis", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "redis":
        srv: RedisServer = request.getfixturevalue("redis_server")
        yield srv.url
    else:
        yield f"sqlite://{tmp_path / 'leases.db'}"


async def test_metadata_with_separators_round_trips_exactly(
    store_url: str, unique_name: str
) -> None:
    client = await dl.LeaseClient.connect(store_url)
    other = await dl.LeaseClient.connect(store_url)
    async with client.lease(unique_name, metadata=TRICKY_METADATA) as lease:
        info = await other.inspect(unique_name)
        assert info is not None and info.metadata == TRICKY_METADATA
        with pytest.raises(dl.LeaseUnavailable) as refused:
            await other.acquire(unique_name)
        assert refused.value.holder is not None
        assert refused.value.holder.metadata == TRICKY_METADATA
        [listed] = await other.list(unique_name)
        assert listed.metadata == TRICKY_METADATA
        assert listed.lease_id == lease.lease_id


# ------------------------------------------------------------------------------------------
# Fuzzing the Python API
# ------------------------------------------------------------------------------------------

weird_text = st.text(
    st.characters(codec=None, exclude_categories=()),  # includes controls and lone surrogates
    max_size=40,
)
names = st.one_of(
    st.text(string.ascii_letters + string.digits + ":-_./{}", min_size=1, max_size=30),
    weird_text,
    st.text(min_size=1000, max_size=1100),
    st.sampled_from(["", "a:fence", "ok", "lease:{x}", "x" * 1025]),
    st.integers(),
    st.none(),
    st.binary(max_size=8),
)
numbers = st.one_of(
    st.none(),
    st.floats(min_value=0.01, max_value=120.0),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 0.0, -0.0, -1, 1e-12, 0.005, 0.01, 2**64, 10**400, -(10**400), 1e308]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.text(max_size=5),
    st.just([1.0]),
)
scalar = st.one_of(weird_text, st.integers(), st.none(), st.floats(), st.binary(max_size=4))
metadatas = st.one_of(
    st.none(),
    st.dictionaries(weird_text, weird_text, max_size=4),
    st.dictionaries(scalar, scalar, max_size=3),
    st.lists(st.tuples(weird_text, weird_text), max_size=2),
    st.just("not a mapping"),
    st.just(42),
)


def call_and_clean(make: Any, kwargs: dict[str, Any]) -> None:
    """Run one API call; a lease it gets is released. Anything but a typed error fails."""
    try:
        result = make(**kwargs)
    except TYPED as e:
        assert str(e), f"{type(e).__name__} without a message for {kwargs!r}"
        event(f"refused: {type(e).__name__}")
        return
    event("accepted")
    if isinstance(result, dl.Lease):
        result.release_sync()


FUZZ = settings(
    max_examples=150,
    deadline=None,  # a slow example is not a failure; a hang is caught by pytest-timeout
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)


@FUZZ
@given(
    name=names,
    duration=numbers,
    renew_interval=numbers,
    auto_renew=st.one_of(st.none(), st.booleans(), st.just("yes")),
    metadata=metadatas,
)
def test_fuzzed_try_acquire_only_raises_typed_errors(
    fuzz_client: dl.LeaseClient,
    name: Any,
    duration: Any,
    renew_interval: Any,
    auto_renew: Any,
    metadata: Any,
) -> None:
    call_and_clean(
        fuzz_client.try_acquire_sync,
        {
            "name": name,
            "duration": duration,
            "renew_interval": renew_interval,
            "auto_renew": auto_renew,
            "metadata": metadata,
        },
    )


@FUZZ
@given(name=names, wait=numbers, duration=numbers)
def test_fuzzed_acquire_with_wait_only_raises_typed_errors(
    fuzz_client: dl.LeaseClient, name: Any, wait: Any, duration: Any
) -> None:
    # The lease is free, so no valid wait may block: a hang here is a bug.
    call_and_clean(fuzz_client.acquire_sync, {"name": name, "wait": wait, "duration": duration})


@FUZZ
@given(name=names)
def test_fuzzed_names_on_inspect_release_and_force_release(
    fuzz_client: dl.LeaseClient, name: Any
) -> None:
    for call in (fuzz_client.inspect_sync, fuzz_client.force_release_sync):
        call_and_clean(call, {"name": name})
    if isinstance(name, str):
        call_and_clean(fuzz_client.list_sync, {"prefix": name})


@FUZZ
@given(
    duration=numbers,
    renew_interval=numbers,
    wait=numbers,
    on_lost=st.one_of(st.sampled_from(["cancel", "ignore", "explode", ""]), st.none()),
    metadata=metadatas,
)
def test_fuzzed_async_lease_context_only_raises_typed_errors(
    fuzz_client: dl.LeaseClient,
    duration: Any,
    renew_interval: Any,
    wait: Any,
    on_lost: Any,
    metadata: Any,
) -> None:
    name = f"fuzz-async-{uuid.uuid4()}"  # a fresh name: wait=None must never find it held

    async def body() -> None:
        async with fuzz_client.lease(
            name,
            duration=duration,
            renew_interval=renew_interval,
            wait=wait,
            on_lost=on_lost,
            metadata=metadata,
        ) as lease:
            assert lease.name == name

    try:
        asyncio.run(body())
    except TYPED as e:
        assert str(e)


@FUZZ
@given(
    duration=numbers,
    renew_interval=numbers,
    operation_timeout=numbers,
    connect_timeout=numbers,
    key_prefix=st.one_of(st.none(), weird_text),
)
def test_fuzzed_client_options_only_raise_typed_errors(
    tmp_path_factory: pytest.TempPathFactory,
    duration: Any,
    renew_interval: Any,
    operation_timeout: Any,
    connect_timeout: Any,
    key_prefix: Any,
) -> None:
    url = f"sqlite://{tmp_path_factory.getbasetemp() / 'fuzz-options.db'}"
    try:
        client = dl.LeaseClient.connect_sync(
            url,
            duration=duration,
            renew_interval=renew_interval,
            operation_timeout=operation_timeout,
            connect_timeout=connect_timeout,
            key_prefix=key_prefix,
        )
    except TYPED as e:
        assert str(e)
        return
    call_and_clean(client.try_acquire_sync, {"name": "fuzz-options"})


# URLs: only ones that cannot reach the network. Other schemes fail before any I/O; Redis URLs
# point at a loopback port, with fuzzed parts percent-encoded or limited to characters that cannot
# move the host elsewhere (no DNS lookup may happen); SQLite paths stay in a temporary directory.
def quoted(s: str) -> str:
    return urllib.parse.quote(s, safe="", errors="surrogatepass")


@FUZZ
@given(
    url=weird_text.filter(
        lambda s: not re.match(r"(?i)\s*(redis|rediss|valkey|valkeys|sqlite)s?:", s)
    )
)
def test_fuzzed_store_urls_only_raise_typed_errors(url: str) -> None:
    with pytest.raises(TYPED) as info:
        dl.LeaseClient.connect_sync(url, connect_timeout=1.0)
    assert str(info.value)


# Each of these tries to connect (and the driver retries), so fewer examples.
@settings(FUZZ, max_examples=20)
@given(
    url=st.one_of(
        st.builds(lambda s: f"redis://127.0.0.1:1/{quoted(s)}", weird_text),
        st.builds(
            lambda u, p: f"redis://{quoted(u)}:{quoted(p)}@127.0.0.1:1", weird_text, weird_text
        ),
        st.builds(lambda s: f"redis://127.0.0.1:{s}", st.text("0123456789:-+. ", max_size=8)),
    )
)
def test_fuzzed_redis_urls_only_raise_typed_errors(url: str) -> None:
    try:
        client = dl.LeaseClient.connect_sync(url, connect_timeout=1.0)
    except TYPED as e:
        assert str(e)
    else:  # something listens on that loopback port: fine, as long as it did not crash
        client.close_sync()


@FUZZ
@given(filename=weird_text)
def test_fuzzed_sqlite_paths_only_raise_typed_errors(
    tmp_path_factory: pytest.TempPathFactory, filename: str
) -> None:
    base = tmp_path_factory.getbasetemp() / "fuzz-sqlite"
    base.mkdir(exist_ok=True)
    safe = filename.replace("/", "_").replace("\\", "_")
    try:
        client = dl.LeaseClient.connect_sync(f"sqlite://{base}/{safe}")
    except TYPED as e:
        assert str(e)
        return
    call_and_clean(client.try_acquire_sync, {"name": "fuzz-path"})


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory: pytest.TempPathFactory) -> dl.LeaseClient:
    return dl.LeaseClient.connect_sync(
        f"sqlite://{tmp_path_factory.mktemp('fuzz') / 'leases.db'}", operation_timeout=5.0
    )


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("duration", 10**400),
        ("duration", -(10**400)),
        ("renew_interval", 10**400),
        ("wait", 10**400),
    ],
)
def test_integers_beyond_float_range_are_a_value_error_naming_the_parameter(
    fuzz_client: dl.LeaseClient, param: str, value: int
) -> None:
    with pytest.raises(ValueError, match=param):
        fuzz_client.acquire_sync("huge", **{param: value})
    with pytest.raises(ValueError, match="connect_timeout"):
        dl.LeaseClient.connect_sync("sqlite:///nonexistent/x.db", connect_timeout=10**400)


def test_nan_is_never_mistaken_for_a_duration(fuzz_client: dl.LeaseClient) -> None:
    for value in (math.nan, -math.nan):
        with pytest.raises(ValueError, match="finite number"):
            fuzz_client.try_acquire_sync("nan", duration=value)


# ------------------------------------------------------------------------------------------
# Wrong types name the argument, the type given and what to give (issue 12, defect 8)
# ------------------------------------------------------------------------------------------

# (argument, value, the value's type name, what the message must suggest)
WRONG_TYPES = [
    ("wait", "5", "str", "number of seconds"),
    ("wait", True, "bool", "number of seconds"),
    ("duration", "30", "str", "number of seconds"),
    ("renew_interval", b"10", "bytes", "number of seconds"),
    ("auto_renew", "yes", "str", "True or False"),
    ("auto_renew", 1, "int", "True or False"),
    ("metadata", "abc", "str", "dict of str to str"),
    ("metadata", [("instanceId", "a")], "list", "dict of str to str"),  # no silent dict()
    ("metadata", 42, "int", "dict of str to str"),
]


def lease_calls(client: dl.LeaseClient, name: str, **kwargs: Any) -> dict[str, Any]:
    """Every public way to acquire, each a no-argument callable run to completion."""
    no_wait = {k: v for k, v in kwargs.items() if k != "wait"}

    async def async_with(make: Any) -> None:
        async with make():
            pass

    def sync_with(make: Any) -> None:
        with make():
            pass

    calls: dict[str, Any] = {
        "dl.lease async": lambda: asyncio.run(
            async_with(lambda: dl.lease(name, client=client, **kwargs))
        ),
        "dl.lease sync": lambda: sync_with(lambda: dl.lease(name, client=client, **kwargs)),
        "LeaseClient.lease async": lambda: asyncio.run(
            async_with(lambda: client.lease(name, **kwargs))
        ),
        "LeaseClient.lease sync": lambda: sync_with(lambda: client.lease(name, **kwargs)),
        "acquire": lambda: asyncio.run(client.acquire(name, **kwargs)),
        "acquire_sync": lambda: client.acquire_sync(name, **kwargs),
    }
    if "wait" not in kwargs:
        calls["try_acquire"] = lambda: asyncio.run(client.try_acquire(name, **no_wait))
        calls["try_acquire_sync"] = lambda: client.try_acquire_sync(name, **no_wait)
    return calls


@pytest.mark.parametrize(("param", "value", "type_name", "hint"), WRONG_TYPES)
def test_wrong_types_name_the_argument_its_type_and_what_to_give(
    fuzz_client: dl.LeaseClient, param: str, value: Any, type_name: str, hint: str
) -> None:
    name = f"types-{uuid.uuid4().hex[:8]}"
    calls = lease_calls(fuzz_client, name, **{param: value})
    # Without a client, refused before a default client is looked for (nothing configured here).
    calls["dl.lease default client"] = lambda: dl.lease(name, **{param: value})
    for path, call in calls.items():
        with pytest.raises(TypeError) as info:
            call()
        message = str(info.value)
        assert f"{param}=" in message, (path, message)
        assert f"is a {type_name}" in message, (path, message)
        assert hint in message, (path, message)
        assert fuzz_client.inspect_sync(name) is None, path  # nothing was acquired


def test_numbers_of_other_types_are_still_seconds(fuzz_client: dl.LeaseClient) -> None:
    """Strict, not narrow: any real number is a number of seconds (Fraction, Decimal)."""
    from decimal import Decimal
    from fractions import Fraction

    name = f"types-{uuid.uuid4().hex[:8]}"
    lease = fuzz_client.acquire_sync(name, wait=Fraction(1, 2), duration=Decimal("10"))
    assert lease.expires_in > 5
    lease.release_sync()


@pytest.mark.parametrize(
    ("param", "value", "type_name"),
    [("duration", "30", "str"), ("auto_renew", "yes", "str"), ("connect_timeout", [1], "list")],
)
def test_wrong_client_option_types_name_the_argument(
    tmp_path: Path, param: str, value: Any, type_name: str
) -> None:
    url = f"sqlite://{tmp_path / 'leases.db'}"
    for connect in (
        lambda: dl.LeaseClient.connect_sync(url, **{param: value}),
        lambda: asyncio.run(dl.LeaseClient.connect(url, **{param: value})),
    ):
        with pytest.raises(TypeError, match=rf"^{param}=.* is a {type_name}; give "):
            connect()


# ------------------------------------------------------------------------------------------
# Metadata limits: 1,000 entries, 64 KiB (issue 12, defect 8)
# ------------------------------------------------------------------------------------------


def many(n: int) -> dict[str, str]:
    return {f"key{i:05d}": f"value{i}" for i in range(n)}


@pytest.mark.parametrize(
    ("metadata", "limit"),
    [
        (many(8000), "1000 entries"),  # was a raw Lua "too many results to unpack" in Redis
        (many(1001), "1000 entries"),
        ({"blob": "x" * (64 * 1024)}, "65536 bytes"),
        ({f"k{i}": "y" * 700 for i in range(100)}, "65536 bytes"),
    ],
    ids=["8000-entries", "1001-entries", "one-64KiB-value", "100-values-of-700-bytes"],
)
def test_metadata_above_the_limits_is_refused_on_every_path_naming_the_limit(
    store_url: str, metadata: dict[str, str], limit: str
) -> None:
    client = dl.LeaseClient.connect_sync(store_url)
    name = f"limits-{uuid.uuid4().hex[:8]}"
    for path, call in lease_calls(client, name, metadata=metadata).items():
        with pytest.raises(ValueError) as info:
            call()
        message = str(info.value)
        assert "metadata" in message and limit in message, (path, message)
        assert client.inspect_sync(name) is None, path
    # The waiting path (wait > 0) too.
    with pytest.raises(ValueError, match=limit):
        client.acquire_sync(name, wait=1.0, metadata=metadata)


def test_metadata_at_the_limits_is_stored_exactly(store_url: str) -> None:
    client = dl.LeaseClient.connect_sync(store_url)
    for metadata in (many(1000), {"blob": "x" * (64 * 1024 - 4)}):
        name = f"limits-{uuid.uuid4().hex[:8]}"
        with client.lease(name, metadata=metadata):
            info = client.inspect_sync(name)
            assert info is not None and info.metadata == metadata


def test_unavailable_message_escapes_the_holders_text(store_url: str) -> None:
    """The message shows the holder's instanceId and region; someone else's control characters
    in them cannot forge lines in a log (the attributes stay exact)."""
    client = dl.LeaseClient.connect_sync(store_url)
    name = f"forge-{uuid.uuid4().hex[:8]}"
    metadata = {"instanceId": "x\nERROR forged line", "region": "\x1b[2J\u202e"}
    with client.lease(name, metadata=metadata), pytest.raises(dl.LeaseUnavailable) as info:
        client.acquire_sync(name)
    message = str(info.value)
    for c in ("\n", "\x1b", "\u202e"):
        assert c not in message, message
    assert '"x\\nERROR forged line"' in message, message
    assert info.value.holder is not None and info.value.holder.metadata == metadata


# ------------------------------------------------------------------------------------------
# Arguments of the admin calls, text that is not text, a control character in the prefix
# (issue 22)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "param"),
    [
        (lambda c: c.inspect_sync(5), "name"),
        (lambda c: asyncio.run(c.inspect(5)), "name"),
        (lambda c: c.list_sync(5), "prefix"),
        (lambda c: c.list_sync(None), "prefix"),
        (lambda c: asyncio.run(c.list(b"jobs")), "prefix"),
        (lambda c: c.force_release_sync(None), "name"),
        (lambda c: asyncio.run(c.force_release(7)), "name"),
        (lambda c: c.force_release_sync("x", lease_id=5), "lease_id"),
    ],
    ids=[
        "inspect_sync",
        "inspect",
        "list_sync-int",
        "list_sync-None",
        "list-bytes",
        "force_release_sync",
        "force_release",
        "force_release-lease_id",
    ],
)
def test_admin_calls_name_the_argument_of_the_wrong_type(
    fuzz_client: dl.LeaseClient, call: Any, param: str
) -> None:
    with pytest.raises(TypeError, match=rf"^{param}=.* is a \w+; give a str"):
        call(fuzz_client)


def test_a_lone_surrogate_is_a_value_error_naming_the_argument(
    fuzz_client: dl.LeaseClient,
) -> None:
    bad = "job-\udc80"
    calls = {
        **lease_calls(fuzz_client, bad),
        "inspect_sync": lambda: fuzz_client.inspect_sync(bad),
        "list_sync": lambda: fuzz_client.list_sync(bad),
        "force_release_sync": lambda: fuzz_client.force_release_sync(bad),
    }
    for path, call in calls.items():
        with pytest.raises(ValueError, match="lone surrogate") as info:
            call()
        param = "prefix" if path == "list_sync" else "name"
        assert str(info.value).startswith(f"{param}="), (path, info.value)
    with pytest.raises(ValueError, match=r"metadata\['k'\]=.*lone surrogate"):
        fuzz_client.try_acquire_sync("surrogate-meta", metadata={"k": bad})
    with pytest.raises(ValueError, match=r"^key_prefix=.*lone surrogate"):
        dl.LeaseClient.connect_sync("sqlite:///tmp/never.db", key_prefix=bad)


@pytest.mark.parametrize("prefix", ["a\x00", "lease:\n", "\x1b[31m"])
def test_a_key_prefix_with_a_control_character_is_refused(tmp_path: Path, prefix: str) -> None:
    url = f"sqlite://{tmp_path / 'leases.db'}"
    with pytest.raises(ValueError, match=r"key_prefix .* contains a control character"):
        dl.LeaseClient.connect_sync(url, key_prefix=prefix)
    with pytest.raises(ValueError, match=r"key_prefix .* contains a control character"):
        asyncio.run(dl.LeaseClient.connect(url, key_prefix=prefix))
