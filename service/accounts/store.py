"""Accounts and each user's index of live sessions, in Redis.

    user:<uid>            hash: username, password (argon2id), created, account_number,
                          epoch (credential epoch: +1 with every password change)
    username:<name>       string: uid (the username index; SET NX makes names unique)
    user:<uid>:sessions   hash: public handle -> session id, one per live session

The session index is pruned whenever it is read: entries whose session key
has expired or was deleted drop out.
"""

from __future__ import annotations

import re
import secrets
import time
import unicodedata
from dataclasses import dataclass

from redis import Redis

USERNAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]{2,31}")
PASSWORD_MIN, PASSWORD_MAX = 8, 256


class ValidationFailed(ValueError):
    def __init__(self, fields: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in fields.items()))
        self.fields = fields


class UsernameTaken(Exception):
    pass


class WrongPassword(Exception):
    """The password given to confirm a change is not the account's."""


class AccountGone(Exception):
    """The account was deleted while a change to it was under way."""


@dataclass(frozen=True)
class User:
    uid: str
    username: str
    password_hash: str
    created: int
    account_number: str
    # Sessions carry the epoch of the credentials they were opened with; a
    # password change moves it on, which ends every session opened before,
    # even by a login still in flight.
    epoch: int = 0


def normalize_username(raw) -> str:
    """NFKC and case-folded, so look-alike spellings map to one account."""
    if not isinstance(raw, str):
        return ""
    return unicodedata.normalize("NFKC", raw).strip().casefold()


def validate_credentials(username, password, field="password") -> str:
    """The normalized username; ValidationFailed naming every bad field."""
    problems = {}
    name = normalize_username(username)
    if not USERNAME_PATTERN.fullmatch(name):
        problems["username"] = (
            "3 to 32 characters: letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    problems.update(password_problem(password, field))
    if problems:
        raise ValidationFailed(problems)
    return name


def password_problem(password, field="password") -> dict[str, str]:
    if not isinstance(password, str) or not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        return {field: f"{PASSWORD_MIN} to {PASSWORD_MAX} characters"}
    return {}


# KEYS[1]: username:<name>, KEYS[2]: user:<uid>. ARGV[1]: uid, then the
# record's field/value pairs. One script: the account exists completely or
# not at all, even when Redis refuses its write for want of memory (it
# refuses a script's first growing write, before anything happened).
CREATE_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[2], unpack(ARGV, 2))
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""


# KEYS[1]: user:<uid>. ARGV[1]: the new hash. Only while the account exists:
# a deletion that lands first (another tab) is never undone by this write.
SET_PASSWORD_SCRIPT = """
if redis.call('HEXISTS', KEYS[1], 'username') == 0 then
  return false
end
redis.call('HSET', KEYS[1], 'password', ARGV[1])
return redis.call('HINCRBY', KEYS[1], 'epoch', 1)
"""


# KEYS[1]: user:<uid>:sessions, then the session key of each pair; ARGV:
# handle, session id pairs seen dead. An entry goes only if it still names
# that id and that record is still gone: a rotation that moved the session to
# a new id (and re-indexed it) meanwhile keeps its entry.
PRUNE_SCRIPT = """
local removed = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1]
      and redis.call('EXISTS', KEYS[(i + 1) / 2 + 1]) == 0 then
    redis.call('HDEL', KEYS[1], ARGV[i])
    removed = removed + 1
  end
end
return removed
"""


class AccountStore:
    def __init__(self, client: Redis):
        self.redis = client
        self._create = client.register_script(CREATE_SCRIPT)
        self._set_password = client.register_script(SET_PASSWORD_SCRIPT)
        self._prune = client.register_script(PRUNE_SCRIPT)

    # -- accounts --------------------------------------------------------
    def create(self, username: str, password_hash: str) -> User:
        uid = secrets.token_hex(12)
        user = User(
            uid=uid,
            username=username,
            password_hash=password_hash,
            created=int(time.time()),
            account_number=f"ACCT-{secrets.randbelow(10**12):012d}",
        )
        fields = {"username": user.username, "password": user.password_hash,
                  "created": user.created, "account_number": user.account_number}
        args = [uid, *(item for pair in fields.items() for item in pair)]
        if not self._create(keys=[f"username:{username}", f"user:{uid}"], args=args):
            raise UsernameTaken(username)
        return user

    def get(self, uid: str | None) -> User | None:
        if not uid:
            return None
        raw = self.redis.hgetall(f"user:{uid}")
        if b"username" not in raw:
            # None, or what a password change racing a deletion left before
            # set_password checked that the account exists: no account.
            return None
        data = {k.decode(): v.decode() for k, v in raw.items()}
        return User(uid, data["username"], data["password"], int(data["created"]),
                    data["account_number"], int(data.get("epoch", 0)))

    def find(self, username: str) -> User | None:
        uid = self.redis.get(f"username:{username}")
        return self.get(uid.decode()) if uid else None

    def set_password(self, uid: str, password_hash: str) -> int:
        """Store a new password hash; returns the new credential epoch.
        AccountGone if the account no longer exists (nothing is written)."""
        epoch = self._set_password(keys=[f"user:{uid}"], args=[password_hash])
        if epoch is None:
            raise AccountGone(uid)
        return epoch

    def delete(self, user: User) -> None:
        self.redis.delete(f"user:{user.uid}", f"username:{user.username}")

    # -- the per-user session index ------------------------------------------
    def index_key(self, uid: str) -> str:
        return f"user:{uid}:sessions"

    def add_session(self, uid: str, handle: str, sid: str, ttl_seconds: int) -> None:
        with self.redis.pipeline() as pipe:
            pipe.hset(self.index_key(uid), handle, sid)
            # The index never outlives the longest session it can list.
            pipe.expire(self.index_key(uid), ttl_seconds)
            pipe.execute()

    def remove_session(self, uid: str, handle: str) -> None:
        self.redis.hdel(self.index_key(uid), handle)

    def session_ids(self, uid: str) -> dict[str, str]:
        """handle -> session id of the user's live sessions (pruning dead ones)."""
        raw = self.redis.hgetall(self.index_key(uid))
        entries = {h.decode(): s.decode() for h, s in raw.items()}
        if not entries:
            return {}
        with self.redis.pipeline(transaction=False) as pipe:
            for sid in entries.values():
                pipe.exists(f"session:{sid}")
            alive = pipe.execute()
        dead = {h: s for (h, s), ok in zip(entries.items(), alive) if not ok}
        if dead:
            self.prune(uid, dead)
        return {h: s for h, s in entries.items() if h not in dead}

    def prune(self, uid: str, dead: dict[str, str]) -> int:
        """Remove index entries seen dead (handle -> session id), each only if
        it still names that id and its record is still gone."""
        keys = [self.index_key(uid), *(f"session:{sid}" for sid in dead.values())]
        return self._prune(keys=keys, args=[x for pair in dead.items() for x in pair])

    def prune_session_indexes(self) -> int:
        """Prune every user's index (``flask sessions purge-index``): entries
        of users who never come back are otherwise pruned only when the
        index expires. Returns how many entries were removed."""
        removed = 0
        for key in self.redis.scan_iter(match=self.index_key("*"), count=500):
            uid = key.decode().removeprefix("user:").removesuffix(":sessions")
            before = self.redis.hlen(key)
            removed += max(0, before - len(self.session_ids(uid)))
        return removed

    def drop_index(self, uid: str) -> None:
        self.redis.delete(self.index_key(uid))
