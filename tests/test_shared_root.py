"""Files in a shared root: attacks by a second, unprivileged user on the tmpfs backend.

The test process is root. Each user is a forked child that drops to its uid with ``setresuid``
(root would bypass every permission check): ``ATTACKER`` (nobody) acts with plain ``os`` calls,
``VICTIM`` (another unprivileged uid) uses shmfs. A child forks rather than execs because the
interpreter lives where those uids cannot run it. Roots are the ``root`` fixture's, made a sticky
shared directory (mode 1777) as ``/dev/shm`` is; what the users leave is removed as root.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pickle
import select
import shutil
import signal
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import shmfs
from shmfs.backends.tmpfs import layout as L
from shmfs.backends.tmpfs import segdir
from shmfs.cli import main as cli_main

ATTACKER = 65534  # nobody
VICTIM = 65533
DEAD_PID = 4_000_000  # above any pid_max: no such process
OLD = 3 * 3600  # seconds: older than gc's and the sweep's thresholds
HANG = 10.0  # seconds after which a user's step counts as hung

pytestmark = pytest.mark.usefixtures("tmpfs_backend")


# ---------------------------------------------------------------------------- acting as a user


def _become(uid: int) -> None:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def _child(uid: int, fn: Callable[..., Any], args: tuple[Any, ...], out: int) -> None:
    """The forked user's side: run ``fn`` as ``uid``, send back what came of it, exit."""
    try:
        _become(uid)
        result: tuple[str, Any] = ("ok", fn(*args))
    except BaseException as exc:  # everything goes back to the test
        result = ("raised", exc)
    try:
        payload = pickle.dumps(result)
    except Exception:
        payload = pickle.dumps(("raised", RuntimeError(repr(result[1]))))
    with contextlib.suppress(OSError):
        os.write(out, payload)
    os._exit(0)


def _collect(pid: int, fd: int, timeout: float) -> tuple[str, Any]:
    """Read a user's result; ``("hung", None)`` if it gives none in ``timeout`` seconds."""
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return ("hung", None)
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    os.waitpid(pid, 0)
    if not chunks:
        return ("raised", RuntimeError("the user's process died without a result"))
    found: tuple[str, Any] = pickle.loads(b"".join(chunks))  # our own child's
    return found


def as_user(uid: int, fn: Callable[..., Any], *args: Any, timeout: float = HANG) -> tuple[str, Any]:
    """Run ``fn(*args)`` as ``uid`` in a forked child: ``("ok", result)``, ``("raised",
    exception)`` or ``("hung", None)``."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        _child(uid, fn, args, write)
    os.close(write)
    return _collect(pid, read, timeout)


def ok(outcome: tuple[str, Any]) -> Any:
    """The result of a user's step that must succeed."""
    kind, value = outcome
    if kind == "raised":
        raise AssertionError(f"the user's step raised {type(value).__name__}: {value}")
    assert kind == "ok", "the user's step hung"
    return value


@contextlib.contextmanager
def holding(uid: int, fn: Callable[[], None]) -> Iterator[None]:
    """As ``uid``, run ``fn`` (which takes something: a lock, say) and keep the process alive,
    holding it, until the block ends."""
    ready_r, ready_w = os.pipe()
    stop_r, stop_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        os.close(stop_w)
        try:
            _become(uid)
            fn()
            os.write(ready_w, b"y")
        except BaseException as exc:
            os.write(ready_w, f"n{type(exc).__name__}: {exc}".encode())
        os.read(stop_r, 1)  # until the parent closes its end
        os._exit(0)
    os.close(ready_w)
    os.close(stop_r)
    try:
        said = os.read(ready_r, 4096).decode()
        assert said == "y", f"the holder failed: {said[1:]}"
        yield
    finally:
        os.close(stop_w)
        os.close(ready_r)
        os.waitpid(pid, 0)


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture
def shared(root: str) -> Iterator[str]:
    """The test's root, made a sticky shared directory; emptied as root afterwards."""
    os.chmod(root, 0o1777)
    yield root
    for name in os.listdir(root):
        path = os.path.join(root, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)


def victim_segment(root: str, key: int, values: dict[int, Any], perm: int = 0o600) -> None:
    """As the victim, make segment ``key`` holding ``values``."""

    def make() -> None:
        with shmfs.attach(key, 1 << 20, perm, root=root, codec="json") as seg:
            for index, value in values.items():
                seg[index] = value

    ok(as_user(VICTIM, make))


def victim_reads(root: str, key: int) -> dict[int, Any]:
    def read() -> dict[int, Any]:
        with shmfs.attach(key, root=root, codec="json") as seg:
            return dict(seg.items())

    return dict(ok(as_user(VICTIM, read)))


def planted_meta(key: int) -> bytes:
    """A metadata page claiming segment ``key``, made long ago by a process now gone."""
    words = memoryview(bytearray(L.PAGE)).cast("Q")
    words[L.M_MAGIC], words[L.M_VERSION] = L.META_MAGIC, L.META_VERSION
    words[L.M_KEY], words[L.M_SIZE], words[L.M_PERM] = key, 1 << 20, 0o600
    words[L.M_CREATED] = (time.time_ns() - OLD * 10**9) & L.MASK64
    words[L.M_CREATOR] = DEAD_PID
    return words.tobytes()


def gc(root: str, *extra: str) -> int:
    return cli_main(["gc", "--root", root, "--backend", "tmpfs", "--older-than", "60", *extra])


# ---------------------------------------------------------------------------- case 1: gc


def test_gc_takes_a_segments_key_from_its_directory_name(shared: str, key: int) -> None:
    """A planted directory whose metadata claims the victim's key, made long ago by a dead
    process, does not make the victim's gc destroy the victim's live segment."""
    victim_segment(shared, key, {1: "precious"})
    meta = planted_meta(key)

    def plant() -> None:
        os.mkdir(os.path.join(shared, "31337"), 0o755)
        fd = os.open(os.path.join(shared, "31337", ".segment"), os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, meta)
        os.close(fd)

    ok(as_user(ATTACKER, plant))
    ok(as_user(VICTIM, gc, shared))
    assert victim_reads(shared, key) == {1: "precious"}
    # root's gc does not take the planted page's word for it either
    assert gc(shared) == 0
    assert victim_reads(shared, key) == {1: "precious"}
    assert os.path.isdir(os.path.join(shared, "31337"))  # not a segment: left alone


def test_gc_skips_an_old_segment_of_another_user(shared: str, key: int) -> None:
    """Another user's abandoned segment is reported and left to its owner (or root); the
    caller's own abandoned segments still go."""

    def abandon(which: int) -> None:
        with shmfs.attach(which, 4096, root=shared, codec="json") as seg:
            seg[1] = "old"
        path = os.path.join(shared, str(which), ".segment")
        fd = os.open(path, os.O_RDWR)
        try:  # made long ago by a process now gone: what gc looks for
            os.pwrite(
                fd, planted_meta(which)[L.M_CREATED * 8 : L.M_CREATOR * 8 + 8], L.M_CREATED * 8
            )
        finally:
            os.close(fd)

    ok(as_user(ATTACKER, abandon, key))
    ok(as_user(VICTIM, abandon, key + 1))
    status = ok(as_user(VICTIM, gc, shared))
    assert status == 0
    assert os.path.isdir(os.path.join(shared, str(key)))  # the attacker's: skipped
    assert not os.path.exists(os.path.join(shared, str(key + 1)))  # the victim's own: gone
    assert gc(shared) == 0  # root acts on every user's
    assert not os.path.exists(os.path.join(shared, str(key)))


# ---------------------------------------------------------------------------- case 2: FIFOs


def test_a_fifo_for_metadata_hangs_no_listing(shared: str, key: int) -> None:
    victim_segment(shared, key, {1: "v"})

    def plant() -> None:
        os.mkdir(os.path.join(shared, "424242"), 0o755)
        os.mkfifo(os.path.join(shared, "424242", ".segment"), 0o644)

    ok(as_user(ATTACKER, plant))

    def listing() -> list[int]:
        return [info["key"] for info in shmfs.segments(backend="tmpfs", root=shared)]

    assert ok(as_user(VICTIM, listing)) == [key]
    assert ok(as_user(VICTIM, gc, shared)) == 0
    for command in (["ls"], ["get", "1"], ["stat"]):  # each looks through the listing
        argv = [*command, "--key", str(key), "--root", shared, "--backend", "tmpfs"]
        assert ok(as_user(VICTIM, cli_main, [*argv, "--codec", "json"])) == 0, command
    assert ok(as_user(0, listing)) == [key]  # root too
    assert ok(as_user(0, gc, shared)) == 0
    assert victim_reads(shared, key) == {1: "v"}


def test_a_fifo_in_a_segment_is_refused_not_waited_on(shared: str, key: int) -> None:
    """In a segment others may write (perm 0666), a FIFO another user put at a variable's name
    (which the owner may not open) is no reason for destroy to stop half-way."""
    victim_segment(shared, key, {}, perm=0o666)
    ok(as_user(ATTACKER, os.mkfifo, os.path.join(shared, str(key), "5"), 0o666))

    def use() -> tuple[bool, str]:
        with shmfs.attach(key, root=shared, codec="json") as seg:
            seg.destroy()
        return (True, "")

    assert ok(as_user(VICTIM, use)) == (True, "")
    assert not os.path.exists(os.path.join(shared, str(key)))


# ---------------------------------------------------------------------------- case 3: locks


def _flock_everything(directory: str) -> Callable[[], None]:
    def take() -> None:
        held = 0
        for name in os.listdir(directory):
            try:
                fd = os.open(os.path.join(directory, name), os.O_RDONLY | os.O_NONBLOCK)
            except OSError:
                continue  # not ours to open: that is the point
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held += 1
        assert held, f"nothing in {os.listdir(directory)} could be opened"

    return take


def test_a_reader_cannot_block_writers(shared: str, key: int) -> None:
    """Everyone may read the segment (perm 0644); a reader flocks every file it can open.
    The owner's writes, locks and views go on."""
    big = "x" * 100_000  # a variable with a file of its own, which view() maps
    victim_segment(shared, key, {1: "a", 2: big}, perm=0o644)
    directory = os.path.join(shared, str(key))

    def write() -> str:
        with shmfs.attach(key, root=shared, codec="json", lock_timeout=2.0) as seg:
            seg[1] = "b"
            with seg.lock(timeout=2.0):
                seg[3] = "c"
            with seg.view(2) as value:
                assert value == big
            seg[2] = "y"
            return str(seg[1])

    with holding(ATTACKER, _flock_everything(directory)):
        assert ok(as_user(VICTIM, write)) == "b"


# ---------------------------------------------------------------------------- case 4: temp names


def _next_token() -> int:
    """Where this process's temp-name counter is, for a name that guesses it (an attacker
    who knows the scheme counts from 0; a forked child continues its parent's counter)."""
    from shmfs.backends.tmpfs import segdir  # noqa: PLC0415

    counter = getattr(segdir, "_tokens", None)
    return int(repr(counter)[6:-1]) if counter is not None else 0


def test_predictable_temp_names_brick_nothing(shared: str, key: int) -> None:
    """Names the old scheme would use next (``.new-``/``.dead-`` + key + pid + counter), made
    by another user before the victim acts: creating, destroying and creating again work."""
    go_r, go_w = os.pipe()
    out_r, out_w = os.pipe()
    victim = os.fork()
    if victim == 0:
        os.close(go_w)
        os.close(out_r)
        os.read(go_r, 1)

        def lifecycle() -> list[Any]:
            with shmfs.attach(key, 4096, root=shared, codec="json") as seg:
                seg[1] = "one"
                seg.destroy()
            with shmfs.attach(key, 4096, root=shared, codec="json") as seg:
                seg[1] = "two"
                got = seg[1]
                seg.destroy()
            return [got]

        _child(VICTIM, lifecycle, (), out_w)
    os.close(go_r)
    os.close(out_w)
    start = _next_token()

    def squat() -> None:
        for n in range(start, start + 64):
            for kind in (".new", ".dead"):
                os.mkdir(os.path.join(shared, f"{kind}-{key}-{victim}-{n}"), 0o755)
                os.mkdir(os.path.join(shared, f"{kind}-{key}-{victim}-{n}", "x"), 0o755)

    try:
        ok(as_user(ATTACKER, squat))
    finally:
        os.write(go_w, b"g")
        os.close(go_w)
    assert ok(_collect(victim, out_r, HANG)) == ["two"]
    assert not os.path.exists(os.path.join(shared, str(key)))
    mine = [
        name for name in os.listdir(shared) if os.stat(os.path.join(shared, name)).st_uid == VICTIM
    ]
    assert not mine, f"the victim left {mine}"


# ---------------------------------------------------------------------------- case 6: hard links


@pytest.mark.parametrize("sweeper", [VICTIM, 0])
def test_the_sweep_zeroes_nothing_through_a_planted_link(
    shared: str, key: int, sweeper: int
) -> None:
    """A fake stale ``.dead-`` directory holds a hard link to the victim's value file (as
    ``fs.protected_hardlinks=0`` lets anyone make; here root makes it for the attacker). The
    sweep a creation runs, as the victim or as root, leaves the victim's value alone."""
    big = "v" * 100_000
    victim_segment(shared, key, {5: big})
    fake = os.path.join(shared, f".dead-1-{DEAD_PID}-0")
    ok(as_user(ATTACKER, os.mkdir, fake, 0o777))
    os.link(os.path.join(shared, str(key), "5"), os.path.join(fake, "7"))
    os.utime(fake, (time.time() - OLD, time.time() - OLD))

    def create_another() -> None:
        with shmfs.attach(key + 1, 4096, root=shared) as seg:
            seg.destroy()

    ok(as_user(sweeper, create_another))
    assert victim_reads(shared, key) == {5: big}


def test_destroy_zeroes_nothing_through_a_planted_link(shared: str, key: int) -> None:
    """In a segment others may write (perm 0666), a hard link to the victim's value in another,
    private segment, put at a variable's name: destroying the shared segment leaves the
    private value alone."""
    big = "p" * 100_000
    victim_segment(shared, key, {5: big})
    victim_segment(shared, key + 1, {}, perm=0o666)
    os.link(os.path.join(shared, str(key), "5"), os.path.join(shared, str(key + 1), "9"))

    def destroy() -> None:
        with shmfs.attach(key + 1, root=shared, codec="json") as seg:
            seg.destroy()

    ok(as_user(VICTIM, destroy))
    assert victim_reads(shared, key) == {5: big}


def test_writes_go_through_no_planted_link(shared: str, key: int) -> None:
    """A writer of a shared segment (perm 0666) replaces a variable's file by a hard link to the
    victim's value in another, private segment (as ``fs.protected_hardlinks=0`` lets anyone
    do; here root does it for them). The victim's put and remove of that variable change
    nothing in the private segment."""
    private, public = "p" * 100_000, "q" * 100_000
    victim_segment(shared, key, {5: private})
    victim_segment(shared, key + 1, {9: public}, perm=0o666)
    planted = os.path.join(shared, str(key + 1), ".planted")
    os.link(os.path.join(shared, str(key), "5"), planted)
    os.rename(planted, os.path.join(shared, str(key + 1), "9"))

    def write() -> None:
        with shmfs.attach(key + 1, root=shared, codec="json") as seg:
            for change in (lambda: seg.__setitem__(9, "r" * 100_000), lambda: seg.pop(9)):
                with contextlib.suppress(shmfs.UnsafeSegment):
                    change()

    ok(as_user(VICTIM, write))
    assert victim_reads(shared, key) == {5: private}


# ---------------------------------------------------------------------------- case 10: reading


def test_read_only_access_works(root: str, key: int) -> None:
    """A segment with perm 0644 in the owner's 0711 root: another user reads it (get, has,
    len, iteration, a view of a large value) and is refused every change with a
    PermissionError, leaving nothing behind."""
    os.chmod(root, 0o755)
    home = os.path.join(root, "home")
    os.mkdir(home, 0o711)
    os.chown(home, VICTIM, VICTIM)
    try:
        _read_only(home, key)
    finally:
        shutil.rmtree(home)


def _read_only(home: str, key: int) -> None:
    big = "z" * 100_000
    victim_segment(home, key, {1: "one", 2: [1, 2], 3: big}, perm=0o644)
    before = sorted(os.listdir(os.path.join(home, str(key))))

    def read() -> list[Any]:
        with shmfs.attach(key, root=home, codec="json", trust_uids=[VICTIM]) as seg:
            found = [seg[1], seg.get(2), 1 in seg, 9 in seg, len(seg), list(seg)]
            with seg.view(3) as value:
                found.append(value == big)
            refused = []
            for change in (
                lambda: seg.__setitem__(4, "new"),
                lambda: seg.__delitem__(1),
                lambda: seg.incr(7),
                lambda: seg.update(1, str.upper),
                seg.clear,
                seg.destroy,
            ):
                try:
                    change()
                except PermissionError as exc:
                    refused.append(isinstance(exc, shmfs.ShmfsError))
            found.append(refused)
            return found

    assert ok(as_user(ATTACKER, read)) == [
        "one",
        [1, 2],
        True,
        False,
        3,
        [1, 2, 3],
        True,
        [True] * 6,
    ]
    assert sorted(os.listdir(os.path.join(home, str(key)))) == before
    assert victim_reads(home, key) == {1: "one", 2: [1, 2], 3: big}


def test_a_writer_takes_no_lock_a_reader_could_open(shared: str, key: int) -> None:
    """What a writer locks is a file the reader cannot open at all."""
    victim_segment(shared, key, {1: "a"}, perm=0o644)
    directory = os.path.join(shared, str(key))

    def opened() -> list[str]:
        names = []
        for name in sorted(os.listdir(directory)):
            try:
                os.close(os.open(os.path.join(directory, name), os.O_RDONLY | os.O_NONBLOCK))
            except OSError as exc:
                assert exc.errno == errno.EACCES
                names.append(name)
        return names

    refused = ok(as_user(ATTACKER, opened))
    assert refused, "every file of the segment is open to a reader, the lock's too"
    assert stat.S_IMODE(os.stat(os.path.join(directory, refused[0])).st_mode) & 0o044 == 0


def test_zeroing_a_planted_sparse_file_allocates_nothing() -> None:
    """A wipe zeroes the bytes a file holds, not its holes: a sparse file declaring a gigabyte
    costs nothing to plant and must cost nothing to wipe (tmpfs would fill with the zeros)."""
    directory = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="shmfs-test-sparse-"))
    try:
        with open(directory / "7", "wb") as planted:
            planted.write(b"secret" * 1000)
            planted.truncate(1 << 30)
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            segdir.zero_file(dir_fd, "7", None)
        finally:
            os.close(dir_fd)
        st = os.stat(directory / "7")
        assert st.st_size == 1 << 30
        assert st.st_blocks * 512 < 1 << 20
        with open(directory / "7", "rb") as wiped:
            assert wiped.read(6000) == bytes(6000)
    finally:
        shutil.rmtree(directory)
