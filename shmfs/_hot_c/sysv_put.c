/*
 * shmfs._hot.SysvHot's put (see sysv.c): the value pickled and framed, written through the
 * journal store for store as shmfs/backends/sysv/journal.py writes it, and the chain index told.
 */
#include "sysv.h"

#include <string.h>

/* journal._append: the chunk at end (padding zeroed, stamp last), then end and free. */
static int64_t
sysv_append(SysvHot *self, int64_t key, const uint64_t head[3], PyObject *payload, int64_t need)
{
    int64_t *w = self->words;
    int64_t at = w[H_END];
    int64_t length = FRAME_HEADER + PyBytes_GET_SIZE(payload);
    unsigned char *chunk = (unsigned char *)w + at;
    w[at >> 3] = key;
    w[(at >> 3) + 1] = length;
    w[(at >> 3) + 2] = need;
    memcpy(chunk + PHP_CHUNK_HEADER, head, FRAME_HEADER);
    memcpy(chunk + PHP_CHUNK_HEADER + FRAME_HEADER, PyBytes_AS_STRING(payload),
           (size_t)PyBytes_GET_SIZE(payload));
    memset(chunk + PHP_CHUNK_HEADER + length, 0, (size_t)(need - 8 - PHP_CHUNK_HEADER - length));
    w[((at + need) >> 3) - 1] = (int64_t)sysv_stamp(self->seed, (uint64_t)key, (uint64_t)need,
                                                chunk + PHP_CHUNK_HEADER, (size_t)length);
    set_word(w, H_END, at + need);
    set_word(w, H_FREE, w[H_FREE] - need);
    return at;
}

/* journal.Journal._finish_cut, store for store: the tail moves down in steps (of the chunk's
 * own size, straight from the segment, or through the buffer for a chunk under J_DIRECT), then
 * end and free, the vacated bytes and the buffer zeroed, the state cleared last. */
static void
finish_cut(SysvHot *self)
{
    int64_t *w = self->words;
    unsigned char *bytes = (unsigned char *)w;
    Py_ssize_t base = self->journal >> 3;
    unsigned char *buffer = bytes + self->journal + J_BUFFER;
    int64_t pos = w[base + J_C_POS], old = w[base + J_C_OLD], end = w[base + J_C_END];
    int64_t tail = end - pos - old, done = w[base + J_DONE];
    while (done < tail) {
        if (old >= J_DIRECT) { /* a step of old bytes never overlaps its own source */
            int64_t step = old < tail - done ? old : tail - done;
            memcpy(bytes + pos + done, bytes + pos + old + done, (size_t)step);
            done += step;
        }
        else {
            int64_t step = J_CAPACITY < tail - done ? J_CAPACITY : tail - done;
            set_word(w, base + J_SAVED, -1);
            memcpy(buffer, bytes + pos + old + done, (size_t)step);
            set_word(w, base + J_SAVED, done);
            memcpy(bytes + pos + done, buffer, (size_t)step);
            done += step;
        }
        set_word(w, base + J_DONE, done);
    }
    set_word(w, H_END, end - old);
    set_word(w, H_FREE, w[base + J_C_FREE] + old);
    memset(bytes + end - old, 0, (size_t)old);
    if (tail && old < J_DIRECT) {
        memset(buffer, 0, (size_t)(tail < J_CAPACITY ? tail : J_CAPACITY));
    }
    set_word(w, base + J_SAVED, -1);
    set_word(w, base + J_STATE, J_IDLE);
}

/* journal.Journal.append, or .replace when ``pos`` >= 0 (room for both chunks checked):
 * the new chunk's final offset. */
static int64_t
journalled_put(SysvHot *self, int64_t key, const uint64_t head[3], PyObject *payload,
               int64_t need, int64_t pos, int64_t old)
{
    int64_t *w = self->words;
    Py_ssize_t base = self->journal >> 3;
    set_word(w, base + J_A_END, w[H_END]);
    set_word(w, base + J_A_FREE, w[H_FREE]);
    set_word(w, base + J_A_NEED, need);
    set_word(w, base + J_STATE, J_APPEND);
    int64_t at = sysv_append(self, key, head, payload, need);
    if (pos < 0) {
        set_word(w, base + J_STATE, J_IDLE);
        return at;
    }
    set_word(w, base + J_C_POS, pos); /* Journal._begin_cut: from the append's state at once */
    set_word(w, base + J_C_OLD, old);
    set_word(w, base + J_C_END, w[H_END]);
    set_word(w, base + J_C_FREE, w[H_FREE]);
    set_word(w, base + J_DONE, 0);
    set_word(w, base + J_SAVED, -1);
    set_word(w, base + J_STATE, J_CUT);
    finish_cut(self);
    return at - old;
}

/* The chain's chunks as ChainIndex._renumber reads them (offsets only: the caller proved the
 * whole index), into a PyMem array of (key, offset) pairs, *count of them; NULL if a chunk's
 * ``next`` is off or the chain misses ``end`` (Python's renumber then says so), or with an
 * exception set. Reads the segment and runs no Python code. */
static int64_t *
chain_offsets(SysvHot *self, int64_t end, Py_ssize_t *count)
{
    const int64_t *w = self->words;
    int64_t pos = w[H_START];
    Py_ssize_t most = (Py_ssize_t)((end - pos) / PHP_MIN_CHUNK) + 1, n = 0;
    int64_t *pairs = PyMem_Malloc((size_t)most * 2 * sizeof(int64_t));
    if (pairs == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    while (pos < end) {
        /* checked_end: 8-aligned start <= end <= total <= the segment's size */
        int64_t step = pos > end - PHP_MIN_CHUNK ? 0 : w[(pos >> 3) + 2];
        if (step < PHP_MIN_CHUNK || step & 7 || step > end - pos || n == most) {
            PyMem_Free(pairs);
            return NULL;
        }
        pairs[2 * n] = w[pos >> 3];
        pairs[2 * n + 1] = pos;
        n++;
        pos += step;
    }
    *count = n;
    return pairs;
}

/* where[key] = (pos, 0). The tuple there is updated in place when the dict alone holds it, as
 * CPython reuses a tuple nothing else references: no code can see it change, and a renumbering
 * then makes no tuple and no dict insert per chunk. -1 with an exception set. */
static int
entry_set(PyObject *where, PyObject *key, int64_t pos)
{
    PyObject *entry = PyDict_GetItemWithError(where, key); /* int keys: no code runs */
    if (entry != NULL && PyTuple_CheckExact(entry) && PyTuple_GET_SIZE(entry) == 2
        && Py_REFCNT(entry) == 1) {
        PyObject *offset = PyLong_FromLongLong(pos);
        if (offset == NULL) {
            return -1;
        }
        PyObject *was = PyTuple_GET_ITEM(entry, 0), *seen = PyTuple_GET_ITEM(entry, 1);
        PyTuple_SET_ITEM(entry, 0, offset);
        PyTuple_SET_ITEM(entry, 1, PyLong_FromLong(0)); /* a cached small int: never fails */
        Py_DECREF(was); /* ints: freeing them runs no code */
        Py_DECREF(seen);
        return 0;
    }
    if (entry == NULL && PyErr_Occurred()) {
        return -1;
    }
    entry = sysv_pair(pos, 0);
    int done = entry == NULL ? -1 : PyDict_SetItem(where, key, entry);
    Py_XDECREF(entry);
    return done;
}

/* ChainIndex._renumber's result from chain_offsets' pairs: every offset afresh, no moves. On
 * failure the index is emptied (its lookups walk again), as forget() leaves it but for
 * ``indexed``, which alone says nothing then. */
static int
renumbered(SysvHot *self, const int64_t *pairs, Py_ssize_t count)
{
    if (PyList_SetSlice(self->moves, 0, PyList_GET_SIZE(self->moves), NULL) < 0) {
        goto failed;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *key = PyLong_FromLongLong(pairs[2 * i]);
        int done = key == NULL ? -1 : entry_set(self->where, key, pairs[2 * i + 1]);
        Py_XDECREF(key);
        if (done < 0) {
            goto failed;
        }
    }
    return 1;
failed:
    PyDict_Clear(self->where);
    if (PyByteArray_Resize(self->copy, 0) < 0) {
        PyErr_Clear(); /* the first error is the one to report */
    }
    return -1;
}

/* The two tuples ChainIndex.stored keeps, made before the lock is taken (their numbers are
 * set under it): a tuple's allocation may start a collection, which a quiet put must not. */
typedef struct {
    PyObject *entry; /* index -> (offset, moves seen) */
    PyObject *move;  /* (offset, size) of the replaced chunk; NULL for a new variable */
} Prepared;

/* Whether the move log is full after this put (ChainIndex._max_moves), so that the index is to
 * be renumbered. */
static int
renumber_due(SysvHot *self, PyObject *index, Py_ssize_t pos)
{
    Py_ssize_t count = PyList_GET_SIZE(self->moves) + (pos >= 0);
    Py_ssize_t chunks = PyDict_GET_SIZE(self->where) + (PyDict_Contains(self->where, index) == 0);
    Py_ssize_t most = MOVES_BASE + chunks / MOVES_PER;
    return count > (most < MOVES_CAP ? most : MOVES_CAP);
}

/* ``pair`` (a prepared tuple, holding None twice) holding a and b; -1 with an exception set. */
static int
fill_pair(PyObject *pair, long long a, long long b)
{
    PyObject *first = PyLong_FromLongLong(a), *second = PyLong_FromLongLong(b);
    if (first == NULL || second == NULL) {
        Py_XDECREF(first);
        Py_XDECREF(second);
        return -1;
    }
    PyTuple_SET_ITEM(pair, 0, first); /* the Nones' references: None is never freed */
    PyTuple_SET_ITEM(pair, 1, second);
    Py_DECREF(Py_None);
    Py_DECREF(Py_None);
    return 0;
}

/* ChainIndex._patch, in C: the copy gets the cut and the append the segment got (our chunk's
 * bytes and the header from the segment, the rest moved within the copy itself), so that a
 * difference a foreign writer made elsewhere stays one; dropped for big values, or when it was
 * not the length the write found (the write then proved nothing with it). No Python code since
 * the write: the words are still the segment's. -1 with an exception set. */
static int
copy_patched(SysvHot *self, Py_ssize_t pos, int64_t old, int64_t at, Py_ssize_t chunks)
{
    PyObject *copy = self->copy;
    Py_ssize_t had = PyByteArray_GET_SIZE(copy);
    int64_t end = self->words[H_END];
    if (had == 0) {
        return 0;
    }
    if (end > (int64_t)MAX_AVERAGE_CHUNK * chunks + PHP_HEADER || had - old != at) {
        return PyByteArray_Resize(copy, 0);
    }
    if (pos >= 0) {
        char *bytes = PyByteArray_AS_STRING(copy);
        memmove(bytes + pos, bytes + pos + old, (size_t)(had - pos - old));
    }
    if (PyByteArray_Resize(copy, end) < 0) {
        /* Shifted but not resized: a first byte PHP's magic never has, so that it proves
         * nothing from now on. */
        PyByteArray_AS_STRING(copy)[0] = 0;
        return -1;
    }
    char *bytes = PyByteArray_AS_STRING(copy);
    memcpy(bytes, self->words, PHP_HEADER);
    memcpy(bytes + at, (const char *)self->words + at, (size_t)(end - at));
    return 0;
}

/* ChainIndex.stored, in C: the move logged, the entry set, the copy patched (or dropped, for
 * big values), and when the log is full the offsets read afresh. 1 done; 0 Python's stored is
 * to do it (the chain did not read back whole); -1 an exception. Every read of the segment
 * comes before the first allocation that could start a collection (whose finalizers may close
 * the handle). ``quiet``: no such allocation at all (the prepared tuples are filled; ints and a
 * bytearray's resizing start none), and no renumbering, which may make a tuple for a
 * chunk: a log one longer is renumbered by the next put that may. */
static int
index_stored(SysvHot *self, PyObject *index, Py_ssize_t pos, int64_t old, int64_t at,
             Prepared *ready, int quiet)
{
    PyObject *where = self->where, *moves = self->moves;
    Py_ssize_t count = PyList_GET_SIZE(moves) + (pos >= 0);
    Py_ssize_t chunks = PyDict_GET_SIZE(where) + (PyDict_Contains(where, index) == 0);
    int64_t *pairs = NULL;
    Py_ssize_t found = 0;
    if (!quiet && renumber_due(self, index, pos)) {
        pairs = chain_offsets(self, self->words[H_END], &found);
        if (pairs == NULL) {
            return PyErr_Occurred() ? -1 : 0;
        }
    }
    if (copy_patched(self, pos, pos >= 0 ? old : 0, at, chunks) < 0) {
        PyMem_Free(pairs);
        return -1;
    }
    if (pairs != NULL) {
        int done = renumbered(self, pairs, found);
        PyMem_Free(pairs);
        return done;
    }
    PyObject *entry = ready->entry, *move = pos >= 0 ? ready->move : NULL;
    if (fill_pair(entry, at, count) < 0 || (move != NULL && fill_pair(move, pos, old) < 0)
        || (move != NULL && PyList_Append(moves, move) < 0)) {
        return -1;
    }
    return PyDict_SetItem(where, index, entry) < 0 ? -1 : 1;
}

/* Prepared's tuples, for a put to the variable remembered at ``pos`` (-1: none); -1 with an
 * exception set. */
static int
prepare(Prepared *ready, Py_ssize_t pos)
{
    /* (None, None): code that a collection runs may see them (gc.get_objects), never NULL. */
    ready->entry = PyTuple_Pack(2, Py_None, Py_None);
    ready->move = ready->entry != NULL && pos >= 0 ? PyTuple_Pack(2, Py_None, Py_None) : NULL;
    if (ready->entry == NULL || (pos >= 0 && ready->move == NULL)) {
        Py_CLEAR(ready->entry);
        return -1;
    }
    return 0;
}

static void
prepared_clear(Prepared *ready)
{
    Py_CLEAR(ready->entry);
    Py_CLEAR(ready->move);
}

/* ChainIndex.stored, under the lock as Python's write calls it: that code may allocate, and a
 * collection's finalizers may use the segment, so the lock's depth says it is held (taken 1:
 * by us, now) while it runs. None, or NULL with an exception. */
static PyObject *
told(SysvHot *self, Held *held, PyObject *index, Py_ssize_t pos, int64_t old, int64_t at,
     Prepared *ready)
{
    int taken = held->taken;
    if (taken == 3) { /* the semaphore alone: nothing here may run Python code */
        return index_stored(self, index, pos, old, at, ready, 1) < 0 ? NULL : Py_NewRef(Py_None);
    }
    int64_t *words = held->lock_words; /* exported for as long as the lock is held */
    PyObject *stored = Py_NewRef(self->stored);
    PyObject *call[4] = {index, PyLong_FromSsize_t(pos < 0 ? -1 : pos),
                         PyLong_FromLongLong(pos < 0 ? 0 : old), PyLong_FromLongLong(at)};
    PyObject *done = NULL;
    if (call[1] != NULL && call[2] != NULL && call[3] != NULL) {
        if (taken == 1) {
            words[LOCK_DEPTH] = 1;
        }
        int quick = index_stored(self, index, pos, old, at, ready, 0);
        if (quick == 0) {
            done = PyObject_Vectorcall(stored, call, 4, NULL);
        }
        else {
            done = quick > 0 ? Py_NewRef(Py_None) : NULL;
        }
        if (taken == 1) {
            words[LOCK_DEPTH] = 0;
        }
    }
    Py_XDECREF(call[1]);
    Py_XDECREF(call[2]);
    Py_XDECREF(call[3]);
    Py_DECREF(stored);
    return done;
}

/* Whether the copy is the segment's length ``end`` and holds the segment's header and bytes
 * [from, from + size) (ChainIndex._agrees): all of it, for a new variable; the header and the
 * chunk to be cut, for a remembered one. Lock held, ``end`` checked. */
static int
copy_agrees(SysvHot *self, int64_t end, int64_t from, int64_t size)
{
    const char *copy = PyByteArray_AS_STRING(self->copy);
    const char *segment = (const char *)self->words;
    return PyByteArray_GET_SIZE(self->copy) == end && memcmp(copy, segment, PHP_HEADER) == 0
           && memcmp(copy + from, segment + from, (size_t)size) == 0;
}

const char sysv_put_doc[] =
"put(index, codec_id, value) -> None once stored, or SLOW\n\n"
"Pickle a plain value, frame it and store it as PHP's put does, through the journal, under\n"
"PHP's lock taken without waiting (or already this thread's); then tell the chain index.";

PyObject *
sysv_put(SysvHot *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 3 || nargs > 6) {
        PyErr_SetString(PyExc_TypeError, "put(index, codec_id, value)");
        return NULL;
    }
    if (nargs != 3) {
        return slow(); /* put_if_head: tmpfs's, not ours */
    }
    long codec = PyLong_AsLong(args[1]);
    if (codec == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t budget = SMALL;
    if (self->words == NULL || self->epoch != fork_epoch || self->journal < 0 || codec < 0
        || codec > 255 || !self->executes[codec] || !PyLong_CheckExact(args[0])
        || !plain(args[2], 0, &budget)) {
        return slow();
    }
    int64_t key = PyLong_AsLongLong(args[0]);
    if (key == -1 && PyErr_Occurred()) {
        return slow();
    }
    PyObject *payload = plain_dumps(args[2]);
    if (payload == NULL || !PyBytes_CheckExact(payload)
        || PyBytes_GET_SIZE(payload) > SMALL - FRAME_HEADER || self->words == NULL) {
        Py_XDECREF(payload);
        return slow(); /* Python's encode() says why; or closed while pickling */
    }
    Py_ssize_t n = PyBytes_GET_SIZE(payload);
    uint64_t head[3] = {self->first_word | (uint64_t)codec << CODEC_SHIFT, (uint64_t)n, 0};
    head[2] = checksum(checksum(0, (const unsigned char *)head, 16),
                       (const unsigned char *)PyBytes_AS_STRING(payload), (size_t)n);
    int64_t need = ((FRAME_HEADER + n + 31) / 8) * 8 + 8; /* layout.chunk_size */
    Py_ssize_t pos = sysv_remembered(self, args[0], 0);
    Prepared ready;
    if (prepare(&ready, pos) < 0) {
        Py_DECREF(payload);
        return NULL;
    }
    if (self->words == NULL) {
        Py_DECREF(payload);
        prepared_clear(&ready);
        return slow(); /* closed meanwhile */
    }
    Held held;
    /* Quiet unless the chain index is to be renumbered: under the lock only checks, copies and
     * the prepared tuples filled (see index_stored). */
    int taken = sysv_lock_now(self, &held, !renumber_due(self, args[0], pos));
    if (taken <= 0) {
        Py_DECREF(payload);
        prepared_clear(&ready);
        return taken < 0 ? NULL : slow();
    }
    int64_t end = sysv_checked_end(self), length = 0, old = 0, at = -1;
    /* ChainIndex.find(exact=True): a new variable's absence proved by the whole copy; a
     * remembered one's chunk by its stamp and by the copy agreeing there (copy_agrees). */
    int proved = end >= 0
                 && (pos < 0 ? copy_agrees(self, end, 0, end)
                             : sysv_proved(self, key, pos, end, &length, &old)
                                   && copy_agrees(self, end, pos, old));
    if (proved && self->words[H_FREE] >= need) { /* beside the old chunk: old or new */
        at = journalled_put(self, key, head, payload, need, pos < 0 ? -1 : pos, old);
    }
    Py_DECREF(payload);
    PyObject *done = at < 0 ? Py_NewRef(SLOW) : told(self, &held, args[0], pos, old, at, &ready);
    if (sysv_unlock(self, &held) < 0) {
        Py_XDECREF(done);
        prepared_clear(&ready);
        return NULL; /* stored or not: the chain index proves its offsets before use */
    }
    prepared_clear(&ready); /* after the lock: the last reference may be the only one */
    if (done == NULL || done == SLOW) {
        return done; /* unproved, full or squeezed: Python does it, or says why not */
    }
    Py_DECREF(done);
    Py_RETURN_NONE;
}
