"""The sysv backend: one System V segment per key, laid out exactly as PHP's ``ext/sysvshm``.

``backend`` is the :class:`~shmfs.backends.Backend` (registered as ``"sysv"``); ``layout`` reads
and writes PHP's bytes, no I/O; ``chain_index`` remembers where PHP's chunks are and proves it by
their stamps; ``journal`` makes every change crash-safe through 4 KiB kept past PHP's area;
``semaphore`` is PHP's sysvsem lock; ``translate`` turns errno into shmfs's errors; ``listing``
finds the segments for ``shmfs ls``; ``ipc`` holds the System V system calls. The common get and
put also have a C path (``shmfs/_hot_c/sysv.c``).
"""
