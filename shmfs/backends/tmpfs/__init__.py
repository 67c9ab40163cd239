"""The tmpfs backend (the default): a segment is a directory of mapped files on tmpfs.

``backend.py`` ties the pieces to the Backend protocol; ``layout.py`` holds every number of the
format, which ``docs/tmpfs-format.md`` draws.
"""

from __future__ import annotations

from shmfs.backends.tmpfs.backend import TmpfsBackend, default_root
from shmfs.backends.tmpfs.largevars import MAX_MAPPINGS, PROCESS_MAPPINGS

__all__ = ["MAX_MAPPINGS", "PROCESS_MAPPINGS", "TmpfsBackend", "default_root"]
