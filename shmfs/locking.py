"""The segment lock: one per segment, shared by threads and processes. The one place portalocker
is imported.

The lock is an exclusive ``flock(2)`` on a file that is never replaced (a segment's ``.segment``
file), taken through portalocker, whose default locker on Linux is ``fcntl.flock``. flock rather
than ``lockf``/``fcntl`` record locks because a record lock silently vanishes when *any*
descriptor of the file is closed in the process (sqlite.org/howtocorrupt.html §2.2), and because
the kernel frees an flock the instant its holder dies, SIGKILL included.

flock locks belong to an open file description, so two threads of one process would both "hold"
it: a ``threading.RLock`` in front gives exclusion between threads and lets the holding thread
re-enter (``with seg.lock(): seg.put(...)``). Only the outermost acquire touches the kernel.

The uncontended path calls the same ``fcntl.flock`` portalocker would, with ``LOCK_NB``:
portalocker's wrapper costs about 5 us per lock/unlock pair against 0.8 us for the bare system
call, on a path every put takes. Contended and timed waits go through ``portalocker.lock``, and
portalocker is imported at the first of them: importing it imports the redis client too where
that is installed, ~0.2 s of CPU that every process (each CLI command among them) paid at
attach, and a wait for a lock held by someone else is the one place that time is not missed.

A lock's life ends with :meth:`ReentrantLock.close`, which waits for no thread: one that holds
the lock, or is taking it, keeps it, and its last release closes what the lock's halves use (a
handle's descriptors and mappings), so nothing is closed under it. The C fast path takes the
lock through :class:`LockInterface`, a declared interface, never by attribute names.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Callable
from typing import Final, NamedTuple, NoReturn

from shmfs.errors import LockTimeout, SegmentDetached, ShmfsError
from shmfs.forking import fork_epoch

__all__ = [
    "CLOSED",
    "DEPTH",
    "FD",
    "FLAGS",
    "INHERITED",
    "WORDS",
    "HoldsSegmentLock",
    "LockInterface",
    "ReentrantLock",
    "SegmentLock",
    "lock_holder_pid",
]

# A lock's state words (LockInterface.words), which the C fast path reads; shmfs/_hot_c/hot.h
# has the same numbers (tests/test_layout.py holds them equal).
#: How many times the holding thread holds the lock; 0: no thread of this process holds it.
DEPTH: Final = 0
#: The descriptor the process-level lock is an flock on; -1: not an flock.
FD: Final = 1
#: Nonzero: the C fast path leaves the lock to Python (the bits say why).
FLAGS: Final = 2
#: The number of words.
WORDS: Final = 3
#: FLAGS bit: the lock was closed (its descriptor may be too).
CLOSED: Final = 1
#: FLAGS bit: a forked child inside a section its parent's thread locked.
INHERITED: Final = 2

# Backoff for timed waits: flock has no timeout of its own, and a blocking flock cannot be
# interrupted from another thread, so timed waits poll. Start short so a lock released within a
# millisecond is picked up at once; cap the interval so a long wait costs little CPU.
_FIRST_POLL = 0.0002
_MAX_POLL = 0.02


class LockInterface(NamedTuple):
    """What the C fast path uses of a :class:`ReentrantLock` (``docs/c-fast-path.md``).

    The C module takes the thread half without waiting (``acquire(False)``), reads ``words``,
    takes the file half itself at depth 0 with ``flock(LOCK_NB)`` on the descriptor ``words``
    names, and gives both back before it runs any Python code. ``words`` is the lock's own state,
    one signed 64-bit word each: :data:`DEPTH`, :data:`FD`, :data:`FLAGS`. Having given back a
    lock it took at depth 0, it calls ``settle`` if ``FLAGS`` was set meanwhile: a close that
    came while it held the lock (a finalizer run by code it called) waited for that release.
    """

    #: The thread lock's ``acquire``, bound.
    acquire: Callable[..., bool]
    #: The thread lock's ``release``, bound.
    release: Callable[[], None]
    #: The lock's state words, shared with the Python code that keeps them.
    words: array.array[int]
    #: Runs what a close left for the holder's last release, if no thread holds the lock now.
    settle: Callable[[], None]


class ReentrantLock:
    """A lock exclusive across threads and processes, re-entrant for the holding thread.

    Its life ends with :meth:`close`, which waits for no one: a thread that holds the lock (or
    is taking it) keeps it and finishes what it does, and the last release runs what ``close``
    was given; from then on ``acquire`` raises ``SegmentDetached``.

    Args:
        name: What the lock guards, for error messages.
        take: Takes the process-level lock within a timeout (``None``: for ever), or raises
            ``LockTimeout``.
        give: Releases the process-level lock.
        fd: The descriptor the process-level lock is an ``flock`` on, for the C fast path; -1
            when it is not one.
    """

    def __init__(
        self,
        name: str,
        take: Callable[[float | None], None],
        give: Callable[[], None],
        fd: int = -1,
    ) -> None:
        self._name = name
        self._take = take
        self._give = give
        self._thread_lock = threading.RLock()
        self._words = array.array("q", [0] * WORDS)
        self._words[FD] = fd
        self._finish: Callable[[], None] | None = None
        self._taking = False  # the holder of the thread half is taking the process-level lock
        self._debt = 0  # releases owed to the parent's sections this forked child is inside
        #: The declared interface of the C fast path to this lock.
        self.interface = LockInterface(
            self._thread_lock.acquire, self._thread_lock.release, self._words, self._try_finish
        )

    @property
    def held(self) -> bool:
        """Whether the calling thread holds the lock."""
        return self._words[DEPTH] > 0 and self._thread_lock._is_owned()  # type: ignore[attr-defined]  # RLock's own ownership test, stable since 3.2

    def acquire(self, timeout: float | None = None) -> None:
        """Take the lock, waiting at most ``timeout`` seconds (``None``: for ever).

        Raises:
            LockTimeout: the lock was not had in time; ``holder_pid`` names the holder if known.
            SegmentDetached: the lock was closed.
            ShmfsError: this is a forked child inside a section its parent's thread locked.
        """
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        got = (
            self._thread_lock.acquire()
            if timeout is None
            else self._thread_lock.acquire(timeout=max(timeout, 0.0))
        )
        if not got:
            raise LockTimeout(
                f"{self._name}: lock not acquired within {timeout:.3g} s "
                "(held by another thread of this process)",
                holder_pid=os.getpid(),
                timeout=timeout,
            )
        words = self._words
        if words[DEPTH] == 0:
            if words[FLAGS] & CLOSED:
                self._refuse()
            # A close (a finalizer's, run by an allocation here) waits until this take is done:
            # its descriptor must stay open under the take.
            self._taking = True
            try:
                self._take(None if deadline is None else max(deadline - time.monotonic(), 0.0))
            except BaseException:
                self._taking = False
                self._thread_lock.release()
                if self._finish is not None:
                    self._try_finish()
                raise
            self._taking = False
        words[DEPTH] += 1

    def try_acquire(self, try_take: Callable[[], bool]) -> bool:
        """Take the lock only if that needs no waiting; ``try_take`` tries the process-level
        lock once. Cheaper than ``acquire(0)``, which reports who holds it. ``False`` for a
        closed lock too."""
        if not self._thread_lock.acquire(blocking=False):
            return False
        words = self._words
        if words[DEPTH] == 0 and (words[FLAGS] & CLOSED or not try_take()):
            try:
                if words[FLAGS] & CLOSED:
                    self._run_finish()  # a close waiting for the lock to be free
            finally:
                self._thread_lock.release()
            return False
        words[DEPTH] += 1
        return True

    def release(self) -> None:
        """Give the lock back; the process-level lock goes with the outermost release."""
        words = self._words
        if words[DEPTH] == 0 and self._debt:
            # A section the parent's thread locked, unwinding in a forked child: nothing of it
            # is ours to give back. (The child's own sections are inside it: they go first.)
            self._debt -= 1
            if not self._debt:
                words[FLAGS] &= ~INHERITED
            return
        words[DEPTH] -= 1
        try:
            if words[DEPTH] == 0:
                self._give()
        finally:
            self._thread_lock.release()
        if self._finish is not None:
            self._try_finish()

    def close(self, finish: Callable[[], None]) -> None:
        """End the lock's life: run ``finish`` (which closes what the lock's halves use) once no
        thread holds the lock, now if none does, else at the holder's last release; from now
        on ``acquire`` raises ``SegmentDetached``. Idempotent: a second ``finish`` is ignored."""
        if self._words[FLAGS] & CLOSED:
            return
        # The order matters: a holder reads _finish after it releases, so either it sees
        # _finish or this call finds the thread lock free.
        self._finish = finish
        self._words[FLAGS] |= CLOSED
        self._try_finish()

    def _try_finish(self) -> None:
        """Run a pending close if no thread holds the lock (or is taking it) now."""
        if self._finish is None:
            return
        if not self._thread_lock.acquire(blocking=False):
            return  # the holder runs it when it lets go
        try:
            if self._words[DEPTH] == 0 and not self._taking:
                self._run_finish()
        finally:
            self._thread_lock.release()

    def _run_finish(self) -> None:
        """Run the pending ``finish``, once. Thread lock held, no section open."""
        finish, self._finish = self._finish, None
        if finish is not None:
            with contextlib.suppress(Exception):  # closing must not fail the caller's release
                finish()

    def _refuse(self) -> NoReturn:
        """A take of a closed lock: refuse it, giving the thread half back."""
        try:
            self._run_finish()  # a close waiting for the lock to be free
        finally:
            self._thread_lock.release()
        raise SegmentDetached(f"{self._name}: this handle was detached")

    def inherit(self, parent: ReentrantLock | None) -> None:
        """In a forked child, take ``parent``'s place. If the forking thread held ``parent``,
        the child is inside a section the parent locked and holds none of it: the releases
        that unwind the section change nothing, taking this lock takes it afresh (waiting for
        the parent, if it still holds it), and a write without that (:meth:`check_writable`)
        is refused, so the child never writes under its parent's lock."""
        if parent is not None and parent.held:
            self._debt = parent._words[DEPTH]
            self._words[FLAGS] |= INHERITED  # the C fast path leaves such a child to Python

    def check_writable(self) -> None:
        """Refuse a write (lock held, says the caller) in a forked child that holds only a
        section its parent locked (see :meth:`inherit`).

        Raises:
            ShmfsError: the child does not hold the lock.
        """
        if self._debt and self._words[DEPTH] == 0:
            raise ShmfsError(
                f"{self._name}: this process forked while its thread held the segment lock (in "
                "pickling a value, say): the child does not hold it, so it cannot go on with "
                "the locked write; start the operation again in the child"
            )


class SegmentLock(ReentrantLock):
    """:class:`ReentrantLock` over an exclusive ``flock`` on an open descriptor.

    Args:
        fd: An open descriptor of a file that is never replaced; the lock does not own it.
        name: What the lock guards, for error messages.
    """

    def __init__(self, fd: int, name: str) -> None:
        super().__init__(name, self._lock_file, self._unlock_file, fd)
        self._fd = fd

    def _unlock_file(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _try_lock_file(self) -> bool:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True

    def try_lock(self) -> bool:
        """Take the lock if it is free right now; whether we did."""
        return self.try_acquire(self._try_lock_file)

    def _lock_file(self, timeout: float | None) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        except OSError as exc:
            raise ShmfsError(f"cannot lock {self._name}: {exc.strerror}") from exc
        deadline = None if timeout is None else time.monotonic() + timeout
        import portalocker  # noqa: PLC0415  # the first wait pays for it: see the docstring

        try:
            if deadline is None:
                portalocker.lock(self._fd, portalocker.LockFlags.EXCLUSIVE)
                return
            poll = _FIRST_POLL
            while True:
                try:
                    portalocker.lock(
                        self._fd,
                        portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING,
                    )
                    return
                except portalocker.AlreadyLocked:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise self._timeout(timeout) from None
                    time.sleep(min(poll, remaining))
                    poll = min(poll * 2, _MAX_POLL)
        except portalocker.LockException as exc:
            raise ShmfsError(f"cannot lock {self._name}: {exc}") from exc

    def _timeout(self, timeout: float | None) -> LockTimeout:
        pid = lock_holder_pid(self._fd)
        holder = f"held by pid {pid}" if pid is not None else "held by another process"
        return LockTimeout(
            f"{self._name}: lock not acquired within {timeout:.3g} s ({holder})",
            holder_pid=pid,
            timeout=timeout,
        )


def lock_holder_pid(fd: int) -> int | None:
    """Return the pid holding an flock on ``fd``'s file, from ``/proc/locks``, or ``None``.

    A holder in another PID namespace shows as pid 0 or not at all; we report ``None`` then.
    """
    try:
        st = os.fstat(fd)
        with open("/proc/locks", encoding="ascii") as locks:
            lines = locks.readlines()
    except OSError:
        return None
    # "1: FLOCK  ADVISORY  WRITE 13850 00:1b:6745 0 EOF"; waiters carry "->" and are skipped.
    target = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == target:
            pid = int(fields[4])
            return pid if pid > 0 else None
    return None


class HoldsSegmentLock:
    """Mixin for backends whose segment lock is a :class:`ReentrantLock` in ``_lock``: the
    release and ownership test every such backend has (acquiring differs per backend)."""

    _lock: ReentrantLock | None = None

    def close(self) -> None:
        """Release this handle's resources, once no thread of ours holds or is taking its lock
        (now, if none does: else that thread's last release does it); idempotent. A forked
        child that has not used the handle closes what it inherited at once: no thread of its
        own can be inside the parent's lock."""
        lock = self._lock
        if lock is None or getattr(self, "_epoch", None) != fork_epoch():
            self._close_now()
        else:
            lock.close(self._close_now)

    def _close_now(self) -> None:
        """Close everything this handle opened, at once. Idempotent."""
        raise NotImplementedError

    def release(self) -> None:
        """Release the segment lock."""
        assert self._lock is not None
        self._lock.release()

    def lock_held(self) -> bool:
        """Whether the calling thread holds the segment lock."""
        return self._lock is not None and self._lock.held
