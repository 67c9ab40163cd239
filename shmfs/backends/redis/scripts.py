"""The Lua scripts of the redis backend: each change to a segment is one atomic step on the server.

Key layout and the lock protocol are described in :mod:`shmfs.backends.redis.backend` and
:mod:`shmfs.backends.redis.lease`. Every script that changes a segment first checks that its
caller still holds the lock (a fencing check), so a holder whose lease expired writes nothing.
"""

from __future__ import annotations

from typing import Final

__all__ = ["DESTROY", "OPEN", "PUT", "RELEASE", "REMOVE", "RENEW"]

# KEYS: meta. ARGV: size, perm, created, creator_pid, owner. The first creator sets the fields.
OPEN: Final = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'size', ARGV[1], 'perm', ARGV[2], 'used', 0, 'created', ARGV[3],
             'creator_pid', ARGV[4], 'owner', ARGV[5])
end
return redis.call('HMGET', KEYS[1], 'size', 'perm')
"""
# Every mutation first checks that the caller still holds the lock (KEYS[1], ARGV[1]).
_FENCE: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('LOST_LOCK') end
if redis.call('EXISTS', KEYS[2]) == 0 then return redis.error_reply('DESTROYED') end
"""
# KEYS: lock, meta, vars, gen, channel. ARGV: token, index, data.
PUT: Final = (
    _FENCE
    + """
local size = tonumber(redis.call('HGET', KEYS[2], 'size'))
local used = tonumber(redis.call('HGET', KEYS[2], 'used'))
if not size or not used then return redis.error_reply('CORRUPT') end
local old = redis.call('HSTRLEN', KEYS[3], ARGV[2])
local new = string.len(ARGV[3])
if used - old + new > size then return {0, used - old} end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
redis.call('HINCRBY', KEYS[2], 'used', new - old)
redis.call('HINCRBY', KEYS[4], ARGV[2], 1)
redis.call('PUBLISH', KEYS[5], ARGV[2])
return {1, used - old + new}
"""
)
REMOVE: Final = (
    _FENCE
    + """
local old = redis.call('HSTRLEN', KEYS[3], ARGV[2])
if redis.call('HDEL', KEYS[3], ARGV[2]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[2], 'used', -old)
redis.call('HINCRBY', KEYS[4], ARGV[2], 1)
redis.call('PUBLISH', KEYS[5], ARGV[2])
return 1
"""
)
DESTROY: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('LOST_LOCK') end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
redis.call('PUBLISH', KEYS[5], 'destroyed')
return 1
"""
# KEYS: lock. ARGV: token [, expiry ms].
RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
RENEW: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
