"""The Lua scripts of the redis backend: each operation on a segment is one atomic script call.

Key layout and the lock protocol are described in :mod:`shmfs.backends.redis.backend` and
:mod:`shmfs.backends.redis.lease`. The scripts that change a segment take the keys ``lock, meta,
vars, gen, changes`` and first pass the *gate*: with a token (the caller holds the explicit lock)
the lock must still be that token, else ``LOST_LOCK`` and nothing is written (fencing); without
one, a lock held by anyone answers ``{-1, holder}`` and nothing is written (the caller waits and
calls again). Then they check that the segment is whole: metadata present, and values only
beside their generations, else ``EVICTED`` (a server evicting keys took part of it).

Scripts that only free memory (remove, clear, destroy) carry ``allow-oom``, so they run on a
server at its ``maxmemory``; the write scripts do not, so at that limit the server refuses them
before they run (Redis 7 checks flagged scripts as they start), and nothing is half written.

A version, ``epoch:generation``, names one state of one index: ``epoch`` is drawn when the
segment is created, so a destroyed and re-created segment never repeats a version.
"""

from __future__ import annotations

from typing import Final

from shmfs.backends.redis import numbers

__all__ = [
    "ADD_INT",
    "CLEAR",
    "DESTROY",
    "INFO",
    "OPEN",
    "PEEK",
    "READ_MANY",
    "RELEASE",
    "REMOVE",
    "RENEW",
    "STATE",
    "TAKE",
    "VERSION",
    "WRITE",
    "WRITE_MANY",
]

# KEYS: meta. ARGV: size, perm, created, creator_pid, owner, epoch. The first creator sets the
# fields; a segment made before versions had an epoch gets one.
OPEN: Final = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'size', ARGV[1], 'perm', ARGV[2], 'used', 0, 'created', ARGV[3],
             'creator_pid', ARGV[4], 'owner', ARGV[5], 'epoch', ARGV[6])
else
  redis.call('HSETNX', KEYS[1], 'epoch', ARGV[6])
end
return redis.call('HMGET', KEYS[1], 'size', 'perm')
"""

# Every change's first step: one made by the explicit lock's holder carries its token (ARGV[1])
# and fails if the lock was lost; any other is refused with the holder's token while it is held.
_HOLDER: Final = """
local holder = redis.call('GET', KEYS[1])
if ARGV[1] ~= '' then
  if holder ~= ARGV[1] then return redis.error_reply('LOST_LOCK') end
elseif holder then
  return {-1, holder}
end
"""

# The gate's second step: the metadata, and whether the segment is whole.
_META: Final = """local meta = redis.call('HMGET', KEYS[2], 'size', 'used', 'epoch')
if not meta[1] then
  if redis.call('EXISTS', KEYS[3], KEYS[4]) > 0 then
    return redis.error_reply('EVICTED metadata')
  end
  return redis.error_reply('DESTROYED')
end
local size, used = tonumber(meta[1]), tonumber(meta[2])
if not size or not used then return redis.error_reply('CORRUPT') end
local epoch = meta[3] or ''
"""
# Values exist only beside their generations, and only while some bytes are used (a frame is
# never empty): any other count of the two hashes is damage.
_WHOLE: Final = """if used > 0 and redis.call('EXISTS', KEYS[3], KEYS[4]) < 2 then
  return redis.error_reply('EVICTED values or generations')
end
"""
_GATE: Final = _HOLDER + _META + _WHOLE

# KEYS: lock, meta, vars, gen, changes. ARGV: token, index, data, mode, expected.
# mode: 'any' (put), 'absent' (add), 'version' (the index is still at version ``expected``),
# 'bytes' (the index holds exactly ``expected``). Replies: {1, version} written; {0, version
# [, value]} the condition failed (the value as found, absent if missing); {2, used} it does not
# fit (used: the bytes the others take); {-1, holder} locked by another.
WRITE: Final = (
    "#!lua\n"
    + _GATE
    + """
if ARGV[4] ~= 'any' then
  local found = epoch .. ':' .. (redis.call('HGET', KEYS[4], ARGV[2]) or '0')
  local ok, cur
  if ARGV[4] == 'version' then
    ok = found == ARGV[5]
  else
    cur = redis.call('HGET', KEYS[3], ARGV[2])
    if ARGV[4] == 'absent' then ok = not cur else ok = cur == ARGV[5] end
  end
  if not ok then
    if cur == nil then cur = redis.call('HGET', KEYS[3], ARGV[2]) end
    if cur then return {0, found, cur} end
    return {0, found}
  end
end
local old = redis.call('HSTRLEN', KEYS[3], ARGV[2])
local new = string.len(ARGV[3])
if used - old + new > size then return {2, used - old} end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
-- Each call in a script costs the server 1-2 us: a value of unchanged size skips this one.
if new ~= old then redis.call('HINCRBY', KEYS[2], 'used', new - old) end
local generation = redis.call('HINCRBY', KEYS[4], ARGV[2], 1)
redis.call('PUBLISH', KEYS[5], ARGV[2])
return {1, epoch .. ':' .. generation}
"""
)
# By codec id: KEYS: lock, meta, vars, gen, changes. ARGV: token, index, delta, default, '1'
# if pickles from this server are trusted (else ''). Adds ``delta`` to the integer at ``index``
# (``default`` if empty) and stores it in the codec's frame (shmfs.backends.redis.numbers).
# Replies: the new value (an integer) written; {0, version [, frame]}: the value is not an
# integer the script reads, or the result would leave its range (the client's general path
# takes it from this state); {2, used, size of the new frame} it does not fit; {-1, holder}
# locked by another.
# The gate's wholeness check rides on calls made anyway (each call costs the server as much as
# a page of Lua): a value found shows its hash is there, and its generation, incremented before
# anything else is written, shows the generations' (1: they were gone; undone, and refused).
# Only an index without a value asks the server which of the two exist.
_ADD_INT: Final = (
    """
local cur = redis.call('HGET', KEYS[3], ARGV[2])
if not cur then
"""
    + _WHOLE
    + """end
local value, delta = tonumber(ARGV[4]), tonumber(ARGV[3])
if cur then value = decode(cur, ARGV[5] == '1') end
local data = value and encode(value + delta)
if not data then
  local found = epoch .. ':' .. (redis.call('HGET', KEYS[4], ARGV[2]) or '0')
  if cur then return {0, found, cur} end
  return {0, found}
end
local old, new = cur and #cur or 0, #data
if used - old + new > size then return {2, used - old, new} end
if redis.call('HINCRBY', KEYS[4], ARGV[2], 1) == 1 and cur then
  redis.call('HDEL', KEYS[4], ARGV[2])
  return redis.error_reply('EVICTED generations')
end
redis.call('HSET', KEYS[3], ARGV[2], data)
if new ~= old then redis.call('HINCRBY', KEYS[2], 'used', new - old) end
redis.call('PUBLISH', KEYS[5], ARGV[2])
-- The new value as an integer reply: exact below LIMIT (formatting it would cost 1 us), and
-- alone (a table costs the server and the client more).
return value + delta
"""
)
ADD_INT: Final = {
    codec: "#!lua\n" + numbers.library(codec) + _HOLDER + _META + _ADD_INT
    for codec in sorted(numbers.CODECS)
}
# KEYS: lock, meta, vars, gen, changes. ARGV: token, then index, data for each variable of a
# batch (each index once). Replies: {1} all written; {2, used} they do not all fit (used: the
# bytes the variables outside the batch take), nothing written; {-1, holder} locked by another.
WRITE_MANY: Final = (
    "#!lua\n"
    + _GATE
    + """
local old, new = 0, 0
for i = 2, #ARGV, 2 do
  old = old + redis.call('HSTRLEN', KEYS[3], ARGV[i])
  new = new + string.len(ARGV[i + 1])
end
if used - old + new > size then return {2, used - old} end
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
  redis.call('HINCRBY', KEYS[4], ARGV[i], 1)
end
redis.call('HINCRBY', KEYS[2], 'used', new - old)
for i = 2, #ARGV, 2 do
  redis.call('PUBLISH', KEYS[5], ARGV[i])
end
return {1}
"""
)
# KEYS: lock, meta, vars, gen, changes. ARGV: token, index. Replies {1} removed, {0} absent.
REMOVE: Final = (
    "#!lua flags=allow-oom\n"
    + _GATE
    + """
local old = redis.call('HSTRLEN', KEYS[3], ARGV[2])
if redis.call('HDEL', KEYS[3], ARGV[2]) == 0 then return {0} end
redis.call('HINCRBY', KEYS[2], 'used', -old)
redis.call('HINCRBY', KEYS[4], ARGV[2], 1)
redis.call('PUBLISH', KEYS[5], ARGV[2])
return {1}
"""
)
# KEYS: lock, meta, vars, gen, changes. ARGV: token. Reply {1, count}.
CLEAR: Final = (
    "#!lua flags=allow-oom\n"
    + _GATE
    + """
local indexes = redis.call('HKEYS', KEYS[3])
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[2], 'used', 0)
for _, index in ipairs(indexes) do
  redis.call('HINCRBY', KEYS[4], index, 1)
  redis.call('PUBLISH', KEYS[5], index)
end
return {1, #indexes}
"""
)
# KEYS: lock, meta, vars, gen, changes. ARGV: token. Whatever is left of the segment goes,
# damaged or not.
DESTROY: Final = (
    "#!lua flags=allow-oom"
    + _HOLDER
    + """redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
redis.call('PUBLISH', KEYS[5], 'destroyed')
return {1}
"""
)
# KEYS: meta, vars, gen. ARGV: index. Reply {version [, value]}: the index's state, read at once.
PEEK: Final = """#!lua flags=no-writes
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then return redis.error_reply('DESTROYED') end
local version = epoch .. ':' .. (redis.call('HGET', KEYS[3], ARGV[1]) or '0')
local value = redis.call('HGET', KEYS[2], ARGV[1])
if value then return {version, value} end
return {version}
"""
# KEYS: vars. ARGV: the indexes, as decimals separated by spaces (one argument: cheap to send).
# Reply {packed, absent}: one string, which a client reads in one piece (redis-py parses an
# array of bulk strings in Python, element by element), of the values' lengths (4 bytes each,
# little-endian; 0xFFFFFFFF: no value) followed by the values; and how many indexes hold none.
# Lua's unpack takes 4000 indexes at a time. Every byte a script copies into a new string costs
# the server (the string is made, then collected): the values are joined by one ``..`` of up to
# _RUN of them at once, which copies each once (table.concat copies them into 8 KiB pieces,
# then joins those), the lengths at the head of the first run.
_RUN: Final = 100
READ_MANY: Final = (
    """#!lua flags=no-writes
local fields, count = {}, 0
for field in string.gmatch(ARGV[1], '%S+') do count = count + 1; fields[count] = field end
local v, heads, absent = {}, {}, 0
for first = 1, count, 4000 do
  local values = redis.call('HMGET', KEYS[1], unpack(fields, first, math.min(first + 3999, count)))
  local lengths = {}
  for i = 1, #values do
    local value = values[i]
    if value then lengths[i] = #value else lengths[i], absent = 4294967295, absent + 1 end
    v[first + i - 1] = value
  end
  heads[#heads + 1] = struct.pack('<' .. string.rep('I4', #lengths), unpack(lengths))
end
local runs, lead = {}, table.concat(heads)
for k = 0, count - 1, """
    + str(_RUN)
    + """ do
  runs[#runs + 1] = lead
"""
    + "".join(f"    .. (v[k + {i}] or '')\n" for i in range(1, _RUN + 1))
    + """  lead = ''
end
if #runs == 1 then return {runs[1], absent} end
return {table.concat(runs), absent}
"""
)
# Reads in one step that a server at its maxmemory still answers (it refuses MULTI there).
# KEYS: meta, vars, gen. Reply {meta exists, values exist, generations exist, used or ''}.
STATE: Final = """#!lua flags=no-writes
return {redis.call('EXISTS', KEYS[1]), redis.call('EXISTS', KEYS[2]), redis.call('EXISTS', KEYS[3]),
        redis.call('HGET', KEYS[1], 'used') or ''}
"""
# KEYS: vars, gen. ARGV: index. Reply {generation or false} if the index holds a value, else {}.
VERSION: Final = """#!lua flags=no-writes
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return {} end
return {redis.call('HGET', KEYS[2], ARGV[1])}
"""
# KEYS: meta, vars. Reply {the metadata as field, value, ..., number of variables}.
INFO: Final = """#!lua flags=no-writes
local reply = redis.call('HGETALL', KEYS[1])
table.insert(reply, redis.call('HLEN', KEYS[2]))
return reply
"""
# KEYS: lock. ARGV: token, expiry ms. Allowed at maxmemory: the lock frees memory's users.
TAKE: Final = """#!lua flags=allow-oom
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
"""
# KEYS: lock. ARGV: token [, expiry ms].
RELEASE: Final = """#!lua flags=allow-oom
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
RENEW: Final = """#!lua flags=allow-oom
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
