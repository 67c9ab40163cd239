"""The redis backend: segments on a Redis server, for users who outgrow one machine.

One module per job: ``backend`` is the :class:`~shmfs.backends.Backend` (registered as
``"redis"``); ``ops`` makes each single operation one script call, and ``scripts`` holds those
Lua scripts; ``call`` sends one command on one pooled connection and knows whether a failed
change may have been made; ``connection`` reads URLs (one server, Sentinel, Cluster), makes
clients and decides whether a server is trusted; ``guard`` translates the redis package's
errors; ``lease`` is the explicit lock and ``renewal`` keeps its lease alive while its holder
lives; ``watcher`` waits on a segment's changes; ``listing`` reports on segments.
"""
