"""The tests of theirs that cannot pass against shmfs's backends, each with its reason.

A test listed here must come out skipped or failed (the run says which); one that passes
instead fails the run, so that the list never outlives its reason.
"""

from __future__ import annotations

# Django skips these itself ("Culling isn't implemented.") when the test settings have no
# "cull" and "zero_cull" caches, as its suite does for its Redis and memcached backends: they
# count entries (MAX_ENTRIES) and cull a fraction of them (CULL_FREQUENCY). shmfs bounds a cache
# by bytes (OPTIONS["size"]) and evicts the least recently used entries when it is full;
# counting entries would read every entry on each set, so ShmfsCache refuses both options.
_CULLING = (
    "MAX_ENTRIES / CULL_FREQUENCY: an entry count, culled; shmfs bounds a cache by bytes "
    "(OPTIONS['size']) and evicts least recently used entries (the options are refused)"
)
DJANGO: dict[str, str] = {
    "test_cull": _CULLING,
    "test_zero_cull": _CULLING,
    "test_cull_delete_when_store_empty": _CULLING,
}

CACHELIB: dict[str, str] = {}
