"""The session record store alone (no Flask), against a real redis-server."""

import pickle
import secrets
import time

import pytest

from service.session_store import SessionStore, now_ms


@pytest.fixture
def store(redis_server):
    """A store under a prefix of its own, idle timeout 60 s, absolute 120 s."""
    prefix = f"test-{secrets.token_hex(4)}:session:"
    client = redis_server.client()
    yield SessionStore(client, idle_timeout=60, absolute_timeout=120, key_prefix=prefix)
    for key in client.scan_iter(prefix + "*"):
        client.delete(key)
    client.close()


def test_a_new_record_is_a_hash_of_msgpack_values_with_times(store):
    sid = store.new_id()
    assert store.is_id(sid) and not store.is_id(sid[:-1]) and not store.is_id(sid + "x")
    created = now_ms()
    assert store.write(sid, created, {"uid": "u1", "n": [1, 2]}, must_exist=False)

    raw = store.client.hgetall(store.key(sid))
    assert set(raw) == {b"d:uid", b"d:n", b"m:created", b"m:seen"}
    assert int(raw[b"m:created"]) == created
    assert 59_000 < store.client.pttl(store.key(sid)) <= 60_000  # the idle timeout
    found = store.peek(sid)
    assert found.data == {"uid": "u1", "n": [1, 2]} and found.created_ms == created


def test_a_write_that_must_find_the_record_creates_nothing_when_it_is_gone(store):
    sid = store.new_id()
    assert not store.write(sid, now_ms(), {"late": "write"}, must_exist=True)
    assert not store.client.exists(store.key(sid))

    store.write(sid, now_ms(), {"a": 1}, must_exist=False)
    store.delete(sid)
    assert store.peek(sid) is None
    assert not store.write(sid, now_ms(), {"a": 2}, must_exist=True)
    assert not store.client.exists(store.key(sid))


def test_writes_touch_only_their_own_keys(store):
    sid, created = store.new_id(), now_ms()
    store.write(sid, created, {"a": 1, "b": 2, "c": 3}, must_exist=False)
    assert store.write(sid, created, {"a": 10}, must_exist=True)  # another request: b
    assert store.write(sid, created, {}, removed=["c"], must_exist=True)
    assert store.peek(sid).data == {"a": 10, "b": 2}
    assert int(store.client.hget(store.key(sid), "m:created")) == created  # kept


def test_touch_renews_the_idle_timeout_but_never_recreates(store):
    sid, created = store.new_id(), now_ms()
    store.write(sid, created, {"a": 1}, must_exist=False)
    store.client.pexpire(store.key(sid), 5_000)
    time.sleep(0.01)
    assert store.touch(sid, created)
    assert store.client.pttl(store.key(sid)) > 59_000
    assert store.peek(sid).seen_ms > created

    store.delete(sid)
    assert not store.touch(sid, created)
    assert not store.client.exists(store.key(sid))


def test_the_absolute_timeout_caps_the_ttl_and_ends_the_record(store):
    sid = store.new_id()
    old = now_ms() - 110_000  # 10 s of the 120 s absolute timeout left
    store.write(sid, old, {"a": 1}, must_exist=False)
    assert 9_000 < store.client.pttl(store.key(sid)) <= 10_000
    assert store.touch(sid, old)
    assert store.client.pttl(store.key(sid)) <= 10_000  # activity does not extend it

    expired = store.new_id()
    store.write(expired, now_ms() - 121_000, {"a": 1}, must_exist=False)
    assert store.peek(expired) is None
    assert not store.client.exists(store.key(expired))

    # A record whose TTL outlives its absolute timeout (the setting was
    # lowered, say): peek() itself ends it.
    outlived = store.new_id()
    store.client.hset(store.key(outlived),
                      mapping={"m:created": now_ms() - 121_000, "d:a": b"\x01"})
    store.client.pexpire(store.key(outlived), 60_000)
    assert store.peek(outlived) is None
    assert not store.client.exists(store.key(outlived))


FOREIGN = {
    "a pickled string": pickle.dumps({"uid": "admin"}),
    "a pickle in a field": {"d:uid": pickle.dumps("admin")},
    "an unknown field": {"uid": b"\xa5admin"},
    "no creation time": {"d:uid": b"\xa5admin", "m:created": None},
}


@pytest.mark.parametrize("shape", FOREIGN)
def test_anything_not_written_by_the_store_reads_as_no_record(store, shape):
    sid = store.new_id()
    # The positive control: msgpack values plus the times make a record.
    store.client.hset(store.key(sid), mapping={"m:created": now_ms(), "d:uid": b"\xa5admin"})
    assert store.peek(sid).data == {"uid": "admin"}
    store.delete(sid)

    planted = FOREIGN[shape]
    if isinstance(planted, bytes):
        store.client.set(store.key(sid), planted)
    else:
        fields = {"m:created": now_ms(), **planted}
        store.client.hset(store.key(sid), mapping={k: v for k, v in fields.items() if v})
    assert store.peek(sid) is None


def test_a_record_moves_to_a_new_id_only_while_it_exists(store):
    old, new, created = store.new_id(), store.new_id(), now_ms() - 5_000
    store.write(old, created, {"uid": "u1", "csrf": "c"}, must_exist=False)
    assert store.write(new, created, {"uid": "u1", "epoch": 2}, must_exist=True, moved_from=old)
    assert not store.client.exists(store.key(old))
    found = store.peek(new)
    assert found.data == {"uid": "u1", "csrf": "c", "epoch": 2}  # moved, plus the changes
    assert found.created_ms == created  # the absolute timeout keeps counting

    gone, never = store.new_id(), store.new_id()
    assert not store.write(never, created, {"a": 1}, must_exist=True, moved_from=gone)
    assert not store.client.exists(store.key(never))


def test_deleting_an_old_id_deletes_the_records_it_moved_to(store):
    first, second, third = store.new_id(), store.new_id(), store.new_id()
    created = now_ms()
    store.write(first, created, {"a": 1}, must_exist=False)
    store.write(second, created, {}, must_exist=True, moved_from=first)
    store.write(third, created, {}, must_exist=True, moved_from=second)
    assert 0 < store.client.pttl(store.successor_key(first)) <= 120_000
    assert store.peek(first) is None and store.peek(third).data == {"a": 1}

    store.delete(first)  # a logout still holding the first id
    assert store.peek(third) is None
    assert not any(store.client.exists(k) for k in (
        store.key(third), store.successor_key(first), store.successor_key(second)))
