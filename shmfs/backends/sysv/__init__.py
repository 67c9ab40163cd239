"""The sysv backend: one System V segment per key, laid out exactly as PHP's ``ext/sysvshm``.

``backend`` is the :class:`~shmfs.backends.Backend` (registered as ``"sysv"``); ``layout`` reads
and writes PHP's bytes, no I/O; ``chain_index`` remembers where PHP's chunks are; ``journal`` is
the undo journal kept past PHP's area; ``ipc`` holds the System V system calls.
"""
