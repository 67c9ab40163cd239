/*
 * shmfs._hot.SysvHot: one sysv handle's locked get and put of a small value, in one call.
 *
 * A sysv get in Python is two semop calls through ctypes around a lookup, a copy and a decode,
 * each a few interpreter steps. This type does the common case in one call and answers SLOW for
 * everything else, which shmfs/backends/sysv/ then does as it always has. It adds no protocol of
 * its own: PHP's sysvsem lock as semaphore.py takes it, PHP's chunks as layout.py reads and
 * writes them, the journal as journal.py keeps it, the chain index's offsets proved by their
 * stamps as chain_index.py proves them, and the frame as frame.py checks it. So C and Python
 * (and PHP) readers and writers mix in one segment.
 *
 * What it takes on:
 *   get: the chain index remembers the variable and its chunk's stamp proves the offset; the
 *        lock is this thread's already, or had without waiting; the journal is idle; the value
 *        is PHP's bare bytes (the native codec's decoder is called) or an unsigned frame of at
 *        most SMALL bytes that passes its checks (a pickling codec's only when the segment is
 *        trusted).
 *   put: a plain value (codecs.is_plain) of a pickling codec, framed, at most SMALL bytes; the
 *        lock as for a get; a segment with a journal, idle; the chain index's proof as a write
 *        in Python requires it (ChainIndex.find(exact=True): a new variable's absence by the
 *        whole copy, a remembered one's chunk by its stamp and the copy agreeing there); room
 *        for the new chunk beside the old one. The change goes through the journal store for
 *        store as journal.py makes it, then the chain index is updated as ChainIndex.stored
 *        does.
 * Anything else is SLOW: absent variables, damage, a dead writer's change to finish, a lock
 * held elsewhere (Python waits, with its timeout), a fork, a closed handle.
 *
 * This file holds the type, its get and what get and put share (the lock, the header's checks,
 * the chain index's proofs); sysv_put.c holds the put.
 *
 * The lock: PHP's semaphore, without waiting; at depth 0 the semaphore alone, since no Python
 * code runs while it is held (sysv_lock_now says why that excludes every thread), and with the
 * thread lock too when a put renumbers the chain index, whose tuples may start a collection.
 *
 * Objects and calls. No Python code runs while the lock is held, but for that renumbering: the
 * only allocations then are of bytes objects and ints, which never start a collection, and the
 * put's two tuples are made before the lock is taken. The segment's memory is pinned by a buffer
 * export kept from construction to close(), and read only before anything that can run Python
 * code (pickling, decoding, telling the chain index), after which the call does not touch it
 * again; a close from a finalizer during a call therefore lets go at once.
 */
#include "sysv.h"

#include <errno.h>
#include <string.h>
#include <sys/sem.h>

/* journal.stamp, operation for operation (the arithmetic wraps as Python's masked one does). */
uint64_t
sysv_stamp(uint64_t seed, uint64_t index, uint64_t step, const unsigned char *data, size_t length)
{
    uint32_t check = length <= 2 * STAMP_EDGE
                         ? checksum(0, data, length)
                         : checksum(checksum(0, data, STAMP_EDGE), data + length - STAMP_EDGE,
                                    STAMP_EDGE);
    uint64_t word = (index ^ seed) * 0x9E3779B97F4A7C15ULL
                    + (step << 32 | check) * 0x632BE59BD9B4E019ULL + length;
    return word ^ (word >> 29);
}

/* ------------------------------------------------------------------------------- the lock */


/* semaphore.py's take without waiting, and its give: semop on sem 0 with SEM_UNDO. */
static int
sem_step(int semid, short op)
{
    struct sembuf ops = {0, op, (short)(SEM_UNDO | (op < 0 ? IPC_NOWAIT : 0))};
    return semop(semid, &ops, 1);
}

static int sysv_take(PyObject *acquire, Held *held, int semid);

/* The lock without waiting: 1 taken (the semaphore too), 2 this thread's already, 3 the
 * semaphore alone (``quiet``, below), 0 not had, -1 an exception; ``held`` keeps what the
 * release needs (when 1, 2 or 3). As locking.py's try_acquire: the thread lock, then at depth 0
 * the semaphore.
 *
 * ``quiet``: the caller runs no Python code and allocates nothing a collection could start on
 * while it holds the lock, and gives it back before it returns: it keeps the GIL throughout, so
 * no other thread of this process runs meanwhile. The semaphore alone then excludes everyone
 * the thread lock would: another thread that holds the segment lock holds the semaphore too,
 * or is between the two halves (taking or giving it: the semaphore is taken, so ours fails and
 * Python waits), or holds only the thread lock at depth 0 (about to take the semaphore, or
 * running a close, which sets FLAGS first). So at depth 0 with FLAGS clear the thread lock's
 * acquire and release, two calls into Python's RLock, are left out. */
int
sysv_lock_now(SysvHot *self, Held *held, int quiet)
{
    held->taken = 0;
    held->lock = held->release = held->settle = NULL;
    held->lock_words = NULL;
    if (self->lock == NULL) {
        return 0; /* no lock named yet, or closed */
    }
    PyObject *lock = Py_NewRef(self->lock);
    if (PyObject_GetBuffer(PyTuple_GET_ITEM(lock, 2), &held->buffer, PyBUF_SIMPLE) < 0) {
        Py_DECREF(lock);
        return -1;
    }
    if (held->buffer.len != LOCK_WORDS * 8) { /* checked by reset(): an array('q') keeps its size */
        PyBuffer_Release(&held->buffer);
        Py_DECREF(lock);
        return 0;
    }
    held->lock = lock;
    held->lock_words = (int64_t *)held->buffer.buf;
    if (quiet && held->lock_words[LOCK_FLAGS] == 0 && held->lock_words[LOCK_DEPTH] == 0) {
        held->taken = sem_step(self->semid, -1) == 0 ? 3 : 0;
        if (held->taken == 0) {
            Py_CLEAR(held->lock);
            PyBuffer_Release(&held->buffer);
            held->lock_words = NULL;
        }
        return held->taken; /* not had: another holds it, Python waits */
    }
    held->release = Py_NewRef(PyTuple_GET_ITEM(lock, 1));
    held->settle = Py_NewRef(PyTuple_GET_ITEM(lock, 3));
    held->taken = sysv_take(PyTuple_GET_ITEM(lock, 0), held, self->semid);
    if (held->taken <= 0) {
        Py_CLEAR(held->release);
        Py_CLEAR(held->settle);
        Py_CLEAR(held->lock);
        PyBuffer_Release(&held->buffer);
        held->lock_words = NULL;
    }
    return held->taken;
}

static int
sysv_take(PyObject *acquire, Held *held, int semid)
{
    PyObject *got = PyObject_CallOneArg(acquire, Py_False);
    if (got == NULL) {
        return -1;
    }
    int taken = PyObject_IsTrue(got);
    Py_DECREF(got);
    if (taken != 1) {
        return taken;
    }
    /* Read right after the thread lock is had: a closed lock or a forked child's inherited one
     * (FLAGS) is Python's to refuse; deeper than 0, this thread holds the semaphore already. */
    const int64_t *words = held->lock_words;
    if (words[LOCK_FLAGS] == 0 && words[LOCK_DEPTH] > 0) {
        return 2;
    }
    if (words[LOCK_FLAGS] == 0 && words[LOCK_DEPTH] == 0 && sem_step(semid, -1) == 0) {
        return 1;
    }
    PyObject *done = PyObject_CallNoArgs(held->release);
    Py_XDECREF(done);
    return done == NULL ? -1 : 0; /* the semaphore is another process's: Python waits */
}

/* Give back what lock_now took; -1 (an exception set) if the semaphore or the thread lock
 * refused, as semaphore.py's give reports it. */
int
sysv_unlock(SysvHot *self, Held *held)
{
    int failed = 0;
    if ((held->taken == 1 || held->taken == 3) && sem_step(self->semid, 1) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        failed = 1;
    }
    if (held->taken == 3) { /* quiet: no thread lock to give, no close can have come */
        Py_CLEAR(held->lock);
        PyBuffer_Release(&held->buffer);
        held->lock_words = NULL;
        return failed ? -1 : 0;
    }
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback); /* no Python call with an exception pending */
    PyObject *done = PyObject_CallNoArgs(held->release);
    /* Taken at depth 0, so this was the outermost release: a close that came while we held
     * the lock (a finalizer run by the chain index's code, say: FLAGS set) waited for it. */
    if (done != NULL && held->taken == 1 && held->lock_words[LOCK_FLAGS] != 0) {
        Py_DECREF(done);
        done = PyObject_CallNoArgs(held->settle);
    }
    Py_CLEAR(held->release);
    Py_CLEAR(held->settle);
    Py_CLEAR(held->lock);
    PyBuffer_Release(&held->buffer);
    held->lock_words = NULL;
    Py_XDECREF(done);
    if (done == NULL) {
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(traceback);
        return -1;
    }
    PyErr_Restore(type, value, traceback);
    return failed ? -1 : 0;
}

/* ----------------------------------------------------------------------- the segment */

/* The header's end, after layout.read_header's checks and a look at the journal (idle, or the
 * Python path recovers it); -1 if either fails. Lock held. */
int64_t
sysv_checked_end(SysvHot *self)
{
    const int64_t *w = self->words;
    int64_t start = get_word(w, H_START), end = get_word(w, H_END);
    int64_t free = get_word(w, H_FREE), total = get_word(w, H_TOTAL);
    if (memcmp(w, "PHP_SM", 7) != 0 || total < PHP_HEADER || total > self->size
        || start < PHP_HEADER || start > end || end > total || free < 0 || free > total - end
        || (start | end) & 7) {
        return -1; /* destroyed (wiped), or damaged: Python says which */
    }
    if (self->journal >= 0) {
        Py_ssize_t base = self->journal >> 3;
        if ((uint64_t)get_word(w, base) != J_MAGIC || get_word(w, base + J_STATE) != J_IDLE) {
            return -1;
        }
    }
    return end;
}

/* (a, b) of two C integers: cheaper than Py_BuildValue on every get and put. */
PyObject *
sysv_pair(long long a, long long b)
{
    PyObject *pair = PyTuple_New(2);
    if (pair == NULL) {
        return NULL;
    }
    PyObject *first = PyLong_FromLongLong(a), *second = PyLong_FromLongLong(b);
    if (first == NULL || second == NULL) {
        Py_XDECREF(first);
        Py_XDECREF(second);
        Py_DECREF(pair);
        return NULL;
    }
    PyTuple_SET_ITEM(pair, 0, first);
    PyTuple_SET_ITEM(pair, 1, second);
    return pair;
}

/* chain_index's remembered offset of ``index`` with its moves applied (and, when ``keep``,
stored back, as ChainIndex._catch_up does: so each entry catches up once; a put, which sets the
entry afresh, does not); -1 if it has none. Storing may run a collection's finalizers: the
caller checks that the handle is still open. */
Py_ssize_t
sysv_remembered(SysvHot *self, PyObject *index, int keep)
{
    PyObject *entry = PyDict_GetItemWithError(self->where, index); /* int keys: no code runs */
    if (entry == NULL || !PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 2) {
        PyErr_Clear();
        return -1;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(PyTuple_GET_ITEM(entry, 0));
    Py_ssize_t seen = PyLong_AsSsize_t(PyTuple_GET_ITEM(entry, 1));
    Py_ssize_t count = PyList_GET_SIZE(self->moves);
    if (PyErr_Occurred() || seen < 0 || seen > count) {
        PyErr_Clear();
        return -1;
    }
    for (Py_ssize_t at = seen; at < count; at++) { /* ChainIndex._catch_up */
        PyObject *move = PyList_GET_ITEM(self->moves, at);
        if (!PyTuple_CheckExact(move) || PyTuple_GET_SIZE(move) != 2) {
            return -1;
        }
        Py_ssize_t removed_at = PyLong_AsSsize_t(PyTuple_GET_ITEM(move, 0));
        Py_ssize_t removed = PyLong_AsSsize_t(PyTuple_GET_ITEM(move, 1));
        if (PyErr_Occurred()) {
            PyErr_Clear();
            return -1;
        }
        if (pos > removed_at) {
            pos -= removed;
        }
    }
    if (keep && seen != count) {
        PyObject *entry = sysv_pair(pos, count);
        if (entry == NULL || PyDict_SetItem(self->where, index, entry) < 0) {
            PyErr_Clear();
        }
        Py_XDECREF(entry);
    }
    return pos;
}

/* ChainIndex._proved: whether the chunk at ``pos`` is ``key``'s, by its stamp; its length and
 * next in ``length`` and ``step``. Lock held, ``end`` checked. */
int
sysv_proved(SysvHot *self, int64_t key, Py_ssize_t pos, int64_t end, int64_t *length, int64_t *step)
{
    const int64_t *w = self->words;
    if (pos < PHP_HEADER || pos & 7 || pos > end - PHP_MIN_CHUNK || w[pos >> 3] != key) {
        return 0;
    }
    int64_t len = w[(pos >> 3) + 1], next = w[(pos >> 3) + 2];
    if (next < PHP_MIN_CHUNK || next & 7 || next > end - pos || len < 0
        || len > next - PHP_MIN_CHUNK) {
        return 0;
    }
    const unsigned char *data = (const unsigned char *)w + pos + PHP_CHUNK_HEADER;
    if ((uint64_t)w[((pos + next) >> 3) - 1]
        != sysv_stamp(self->seed, (uint64_t)key, (uint64_t)next, data, (size_t)len)) {
        return 0;
    }
    *length = len;
    *step = next;
    return 1;
}

/* ------------------------------------------------------------------------------- get */

/* A value read under the lock: PHP's bare bytes, or a frame's payload and head. */
static PyObject *
sysv_decode(SysvHot *self, PyObject *data, const uint64_t head[3], int framed)
{
    PyObject *decode = self->native, *failed = NULL;
    if (framed) {
        unsigned codec = (unsigned)(head[0] >> CODEC_SHIFT) & 0xFF;
        decode = self->decoders[codec];
        failed = self->failures[codec];
        uint32_t crc = checksum(checksum(0, (const unsigned char *)head, 16),
                                (const unsigned char *)PyBytes_AS_STRING(data),
                                (size_t)PyBytes_GET_SIZE(data));
        if ((head[0] & ~(0xFFULL << CODEC_SHIFT)) != self->first_word || decode == NULL
            || head[1] != (uint64_t)PyBytes_GET_SIZE(data) || head[2] != crc
            || (self->executes[codec] && !self->trusted)) {
            decode = NULL; /* damage, a signature, or an untrusted writer: Python says which */
        }
    }
    if (decode == NULL) {
        Py_DECREF(data);
        return slow();
    }
    return decode_with(decode, failed, data);
}

PyDoc_STRVAR(sysv_get_doc,
"get(index) -> the value, or SLOW\n\n"
"Read and decode a variable the chain index remembers, under PHP's lock taken without\n"
"waiting (or already this thread's).");

static PyObject *
sysv_get(SysvHot *self, PyObject *index)
{
    if (self->words == NULL || self->epoch != fork_epoch || !PyLong_CheckExact(index)) {
        return slow();
    }
    int64_t key = PyLong_AsLongLong(index);
    if (key == -1 && PyErr_Occurred()) {
        return slow();
    }
    Py_ssize_t pos = sysv_remembered(self, index, 1);
    if (pos < 0 || self->words == NULL) {
        return slow(); /* absent, or not remembered: Python walks; or closed meanwhile */
    }
    Held held;
    /* Quiet: under the lock only checks, a copy and a bytes object (which never starts a
     * collection). */
    int taken = sysv_lock_now(self, &held, 1);
    if (taken <= 0) {
        return taken < 0 ? NULL : slow();
    }
    PyObject *data = NULL;
    uint64_t head[3] = {0, 0, 0};
    int framed = 0;
    int64_t end = sysv_checked_end(self), length, step;
    if (end >= 0 && sysv_proved(self, key, pos, end, &length, &step)) {
        const char *bytes = (const char *)self->words + pos + PHP_CHUNK_HEADER;
        framed = length >= FRAME_HEADER && memcmp(bytes, "\x93SHF", 4) == 0;
        if (framed && length - FRAME_HEADER <= SMALL) {
            memcpy(head, bytes, FRAME_HEADER);
            /* A bytes object: its allocation never starts a collection, so no code runs. */
            data = PyBytes_FromStringAndSize(bytes + FRAME_HEADER, length - FRAME_HEADER);
        }
        else if (!framed && self->native != NULL) {
            data = PyBytes_FromStringAndSize(bytes, length);
        }
    }
    if (sysv_unlock(self, &held) < 0) {
        Py_XDECREF(data);
        return NULL;
    }
    if (data == NULL) {
        return PyErr_Occurred() ? NULL : slow();
    }
    return sysv_decode(self, data, head, framed);
}

/* -------------------------------------------------------------------------- the type */

PyDoc_STRVAR(sysv_reset_doc,
"reset(lock, recoveries, dirty_tag)\n\n"
"The ReentrantLock that guards the segment now (after opening, and after a fork, which this\n"
"call acknowledges); the other two are tmpfs's and ignored.");

static PyObject *
sysv_reset(SysvHot *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "reset(lock, recoveries, dirty_tag)");
        return NULL;
    }
    if (self->words == NULL) {
        Py_RETURN_NONE; /* closed: stays closed */
    }
    PyObject *lock = args[0];
    Py_buffer buffer;
    if (lock_interface_words(lock, &buffer) < 0) {
        return NULL;
    }
    PyBuffer_Release(&buffer); /* each call takes an export of its own (sysv_lock_now) */
    Py_XSETREF(self->lock, Py_NewRef(lock));
    Py_XSETREF(self->acquire, Py_NewRef(PyTuple_GET_ITEM(lock, 0)));
    Py_XSETREF(self->release, Py_NewRef(PyTuple_GET_ITEM(lock, 1)));
    self->epoch = fork_epoch;
    Py_RETURN_NONE;
}

static void
sysv_let_go(SysvHot *self)
{
    if (self->words != NULL) {
        self->words = NULL;
        PyBuffer_Release(&self->buffer);
    }
    Py_CLEAR(self->lock);
    Py_CLEAR(self->acquire);
    Py_CLEAR(self->release);
    Py_CLEAR(self->where);
    Py_CLEAR(self->moves);
    Py_CLEAR(self->copy);
    Py_CLEAR(self->stored);
}

PyDoc_STRVAR(sysv_close_doc, "close()\n\nLet go of the segment: from now on, every call is SLOW.");

static PyObject *
sysv_close(SysvHot *self, PyObject *Py_UNUSED(ignored))
{
    sysv_let_go(self);
    Py_RETURN_NONE;
}

static int
sysv_init(SysvHot *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"view",   "semid",    "journal", "seed",       "trusted", "state",
                            "stored", "decoders", "native",  "first_word", NULL};
    PyObject *view, *state, *stored, *decoders, *native;
    int semid, trusted;
    Py_ssize_t journal;
    unsigned long long seed, first_word;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OinKpO!OO!OK", names, &view, &semid,
                                     &journal, &seed, &trusted, &PyTuple_Type, &state, &stored,
                                     &PyDict_Type, &decoders, &native, &first_word)) {
        return -1;
    }
    if (self->words != NULL || self->where != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "SysvHot is initialised once");
        return -1;
    }
    if (PyTuple_GET_SIZE(state) != 3 || !PyDict_CheckExact(PyTuple_GET_ITEM(state, 0))
        || !PyList_CheckExact(PyTuple_GET_ITEM(state, 1))
        || !PyByteArray_CheckExact(PyTuple_GET_ITEM(state, 2))
        || (first_word & (0xFFULL << CODEC_SHIFT))) {
        PyErr_SetString(PyExc_ValueError,
                        "state: (dict, list, bytearray); first_word: codec byte zero");
        return -1;
    }
    if (take_decoders(decoders, self->decoders, self->failures, self->executes) < 0) {
        return -1;
    }
    if (PyObject_GetBuffer(view, &self->buffer, PyBUF_WRITABLE) < 0) {
        return -1;
    }
    if (((uintptr_t)self->buffer.buf & 7) != 0 || self->buffer.len < PHP_HEADER
        || (journal >= 0
            && (journal & 7 || journal > self->buffer.len - J_BUFFER - J_CAPACITY))) {
        PyBuffer_Release(&self->buffer);
        PyErr_SetString(PyExc_ValueError, "view: an aligned segment, with the journal inside");
        return -1;
    }
    self->words = (int64_t *)self->buffer.buf;
    self->size = self->buffer.len;
    self->semid = semid;
    self->journal = journal;
    self->seed = seed;
    self->trusted = trusted;
    self->where = Py_NewRef(PyTuple_GET_ITEM(state, 0));
    self->moves = Py_NewRef(PyTuple_GET_ITEM(state, 1));
    self->copy = Py_NewRef(PyTuple_GET_ITEM(state, 2));
    self->stored = Py_NewRef(stored);
    self->native = native == Py_None ? NULL : Py_NewRef(native);
    self->first_word = first_word;
    self->epoch = fork_epoch - 1; /* SLOW until reset() names the lock */
    return 0;
}

static int
sysv_traverse(SysvHot *self, visitproc visit, void *arg)
{
    Py_VISIT(self->lock);
    Py_VISIT(self->acquire);
    Py_VISIT(self->release);
    Py_VISIT(self->where);
    Py_VISIT(self->moves);
    Py_VISIT(self->copy);
    Py_VISIT(self->stored);
    Py_VISIT(self->native);
    for (int i = 0; i < 256; i++) {
        Py_VISIT(self->decoders[i]);
        Py_VISIT(self->failures[i]);
    }
    return 0;
}

static int
sysv_clear(SysvHot *self)
{
    sysv_let_go(self);
    Py_CLEAR(self->native);
    for (int i = 0; i < 256; i++) {
        Py_CLEAR(self->decoders[i]);
        Py_CLEAR(self->failures[i]);
    }
    return 0;
}

static void
sysv_dealloc(SysvHot *self)
{
    PyObject_GC_UnTrack(self);
    sysv_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef sysv_methods[] = {
    {"get", (PyCFunction)sysv_get, METH_O, sysv_get_doc},
    {"get_many", (PyCFunction)sysv_get_many, METH_O, sysv_get_many_doc},
    {"put", (PyCFunction)(void (*)(void))sysv_put, METH_FASTCALL, sysv_put_doc},
    {"reset", (PyCFunction)(void (*)(void))sysv_reset, METH_FASTCALL, sysv_reset_doc},
    {"close", (PyCFunction)sysv_close, METH_NOARGS, sysv_close_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(sysv_doc,
"SysvHot(view, semid, journal, seed, trusted, state, stored, decoders, native, first_word)\n\n"
"The C get and put of one sysv segment handle (see shmfs/hotpath.py).");

PyTypeObject SysvHotType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmfs._hot.SysvHot",
    .tp_basicsize = sizeof(SysvHot),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = sysv_doc,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)sysv_init,
    .tp_dealloc = (destructor)sysv_dealloc,
    .tp_traverse = (traverseproc)sysv_traverse,
    .tp_clear = (inquiry)sysv_clear,
    .tp_methods = sysv_methods,
};
