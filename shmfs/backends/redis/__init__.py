"""The redis backend: segments on a Redis server, for users who outgrow one machine.

One module per job: ``backend`` is the :class:`~shmfs.backends.Backend` (registered as
``"redis"``); ``connection`` reaches the server and decides whether it is trusted; ``guard``
translates the redis package's errors; ``scripts`` holds the Lua scripts that make each change
one atomic step on the server; ``lease`` is the segment lock and ``renewal`` keeps its lease
alive while its holder lives; ``watcher`` waits on a segment's changes; ``listing`` reports on
segments.
"""
