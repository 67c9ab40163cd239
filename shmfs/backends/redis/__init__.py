"""The redis backend: segments on a Redis server, for users who outgrow one machine.

``backend`` is the :class:`~shmfs.backends.Backend` (registered as ``"redis"``); ``scripts`` holds
the Lua scripts that make each change one atomic step on the server; ``renewal`` keeps the lock's
lease alive while its holder lives.
"""
