/* shmfs._hot.Hot.put: a plain value stored in place under the segment's flock (see module.c). */
#include "hot.h"

#include <errno.h>
#include <string.h>
#include <sys/file.h>

/* Takes the segment lock's thread lock without waiting. 1: had at depth 0, so the file lock is
 * ours to take; 2: had re-entrantly, so this thread already holds the segment lock (in lock(),
 * update(), a Cache's set), file lock included; 0: another thread has it; -1: an exception. */
int
thread_lock(Hot *self)
{
    if (self->acquire == NULL || self->lock_words == NULL) {
        return 0; /* no lock yet, or closed */
    }
    PyObject *got = PyObject_CallOneArg(self->acquire, Py_False);
    if (got == NULL) {
        return -1;
    }
    int taken = PyObject_IsTrue(got);
    Py_DECREF(got);
    if (taken != 1) {
        return taken;
    }
    /* An RLock another thread owns is not had without waiting, so ours is: at depth 0 nobody
     * in this process holds the file lock (locking.py takes and gives it inside the thread
     * lock); deeper, this thread does. A closed lock (its descriptor may be too) or a forked
     * child's inherited one is Python's to refuse. */
    const int64_t *words = self->lock_words;
    int64_t depth = words[LOCK_DEPTH];
    if (words[LOCK_FLAGS] == 0 && depth >= 0 && words[LOCK_FD] >= 0 && words[LOCK_FD] <= INT32_MAX) {
        return depth == 0 ? 1 : 2;
    }
    return thread_unlock(self) < 0 ? -1 : 0;
}

int
file_lock(Hot *self)
{
    return flock((int)self->lock_words[LOCK_FD], LOCK_EX | LOCK_NB);
}

void
changed(uint64_t *meta, uint64_t used)
{
    store(&meta[M_USED], used);
    store(&meta[M_GENERATION], load(&meta[M_GENERATION]) + 1);
    store(&meta[M_STATE], 0);
}

PyObject *
unlock(Hot *self, int taken, PyObject *result)
{
    /* Cannot fail on a descriptor we just locked; if it did, say so loudly, once the thread
     * half is given back (no Python call with an exception pending). */
    int failed = taken == 1 && flock((int)self->lock_words[LOCK_FD], LOCK_UN) != 0 ? errno : 0;
    if (thread_unlock(self) < 0) {
        return NULL;
    }
    /* Held at depth 0, so this was the outermost release: a close that came meanwhile (FLAGS
     * set) waited for it. No Python code runs under this lock today; this keeps it so. */
    if (taken == 1 && self->lock_words != NULL && self->lock_words[LOCK_FLAGS] != 0
        && self->settle != NULL) {
        PyObject *settle = Py_NewRef(self->settle); /* the call may close this handle */
        PyObject *done = PyObject_CallNoArgs(settle);
        Py_DECREF(settle);
        if (done == NULL) {
            return NULL;
        }
        Py_DECREF(done);
    }
    if (failed) {
        errno = failed;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return result;
}

int
thread_unlock(Hot *self)
{
    PyObject *done = PyObject_CallNoArgs(self->release);
    Py_XDECREF(done);
    return done != NULL ? 0 : -1;
}

/* The put of a pickled value into the variable whose ``mapped`` tuple is ``hot``;
 * ``same_to`` > 0: only over a stored pickle with the same bytes in [same_from, same_to). */
static PyObject *
put_pickled(Hot *self, PyObject *hot, long codec, PyObject *pickled, Py_ssize_t same_from,
            Py_ssize_t same_to)
{
    Py_ssize_t payload_length = PyBytes_GET_SIZE(pickled);
    uint64_t length = (uint64_t)payload_length + FRAME_HEADER;
    /* The lock again: pickling allocates, and a collection it starts may run code that closes
     * this handle. */
    if (self->lock == NULL || self->acquire == NULL || self->epoch != fork_epoch || length > SMALL
        || length + SLOT_HEADER <= SLOT_MAX) {
        /* closed, or forked (by what pickling ran); or a value a slot takes, which the Python
         * path moves there */
        return slow();
    }
    Py_ssize_t capacity = PyLong_AsSsize_t(PyTuple_GET_ITEM(hot, 1));
    /* tmpfs._fits: in place only if it fits, and does not leave a big slot mostly empty. */
    if (capacity <= 0 || length > (uint64_t)capacity
        || (capacity > SMALL && length * 4 < (uint64_t)capacity)) {
        return slow();
    }
    /* Built before the lock is taken: the frame's first three words. */
    const unsigned char *payload = (const unsigned char *)PyBytes_AS_STRING(pickled);
    uint64_t head[3] = {self->first_word | (uint64_t)codec << CODEC_SHIFT, (uint64_t)payload_length, 0};
    head[2] = checksum(checksum(0, (const unsigned char *)head, 16), payload, (size_t)payload_length);

    Py_buffer var_buffer;
    uint64_t *meta = meta_words(self); /* kept by the Hot until the call leaves (maps.c) */
    if (meta == NULL) {
        return slow();
    }
    uint64_t *words = words_of(PyTuple_GET_ITEM(hot, 0), &var_buffer, VAR_HEADER + 2 * capacity);
    if (words == NULL) {
        return slow();
    }
    PyObject *result = SLOW;
    /* locking.py's order: the thread lock, then the file lock at depth 0. */
    int taken = thread_lock(self);
    if (taken < 0) {
        result = NULL;
        goto done;
    }
    if (taken == 0) {
        goto done; /* another thread of ours holds it: Python waits */
    }
    if (taken == 1 && file_lock(self) != 0) {
        goto unlock_thread; /* another process holds it: Python waits, with its timeout */
    }
    uint64_t control = load(&words[W_CONTROL]);
    uint64_t high = control >> 32;
    uint64_t size = load(&meta[M_SIZE]);
    uint64_t used = load(&meta[M_USED]);
    uint64_t old = load(&words[W_LENGTH + (high & 1)]);
    if (load(&meta[M_STATE]) != 0 || load(&meta[M_RECOVERIES]) != self->recoveries
        || load(&meta[M_VIEWS]) != 0 || load(&meta[M_WAITERS]) != 0
        || (control & LOW) != check_of(high) || high & RETIRED || old > used
        || length > size || used - old > size - length) { /* no sum that can wrap */
        /* Destroyed, DIRTY, recovered, viewed, waited on (Python wakes the waiters), damaged,
         * replaced, or full. */
        goto unlock;
    }
    if (same_to > 0) {
        /* Only over a value framed alike whose payload has these bytes in common with ours. */
        const unsigned char *now = (const unsigned char *)words + VAR_HEADER + (high & 1) * capacity;
        if (old < FRAME_HEADER + (uint64_t)same_to || old > (uint64_t)capacity
            || memcmp(now, head, 8) != 0
            || memcmp(now + FRAME_HEADER + same_from, payload + same_from,
                      (size_t)(same_to - same_from)) != 0) {
            goto unlock;
        }
    }
    /* backend.py's write and largefile.py's VarFile.write, store for store. */
    store(&meta[M_STATE], self->dirty_tag);
    uint64_t generation = (high + 1) & GENERATIONS;
    uint64_t slot = generation & 1;
    store(&words[W_SEQ + slot], (generation * 2 - 1));
    __atomic_thread_fence(__ATOMIC_RELEASE); /* the odd sequence is seen before any new byte */
    unsigned char *frame = (unsigned char *)words + VAR_HEADER + slot * capacity;
    memcpy(frame, head, FRAME_HEADER);
    memcpy(frame + FRAME_HEADER, payload, (size_t)payload_length);
    store(&words[W_LENGTH + slot], length);
    store(&words[W_SEQ + slot], generation * 2);
    store(&words[W_CONTROL], generation << 32 | check_of(generation));
    changed(meta, used - old + length);
    result = Py_None;
unlock:
    result = unlock(self, taken, result);
    goto done;
unlock_thread:
    if (thread_unlock(self) < 0) {
        result = NULL;
    }
done:
    PyBuffer_Release(&var_buffer);
    return result != NULL ? Py_NewRef(result) : NULL;
}

const char hot_put_doc[] =
"put(index, codec_id, value[, head_at, head]) -> None, or SLOW\n\n"
"Store a plain value (codecs.is_plain: what both pickling codecs write with pickle itself)\n"
"in a slot, or in place in a mapped large variable, under the segment's flock taken without\n"
"waiting (backend.py's write). With ``head_at`` and ``head``: only if the value's pickle has the bytes ``head`` at\n"
"``head_at``, and so has the pickle stored now, framed by the same codec (a Cache's set:\n"
"over the entry of the same key only); with ``or_absent`` true, also where none is stored.";

static PyObject *put_entered(Hot *self, PyObject *const *args, Py_ssize_t nargs);

PyObject *
hot_put(Hot *self, PyObject *const *args, Py_ssize_t nargs)
{
    enter(self); /* what the call writes stays mapped until it leaves (maps.c) */
    PyObject *result = put_entered(self, args, nargs);
    leave(self);
    return result;
}

static PyObject *
put_entered(Hot *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 && !((nargs == 5 || nargs == 6) && PyBytes_CheckExact(args[4]))) {
        PyErr_SetString(PyExc_TypeError,
                        "put(index, codec_id, value[, head_at, head: bytes[, or_absent]])");
        return NULL;
    }
    int or_absent = nargs == 6 ? PyObject_IsTrue(args[5]) : 0;
    if (or_absent < 0) {
        return NULL;
    }
    long codec = PyLong_AsLong(args[1]);
    if (codec == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t budget = SMALL;
    if (codec < 0 || codec > 255 || !self->executes[codec] || self->closing
        || self->lock == NULL || self->epoch != fork_epoch) {
        return slow();
    }
    if (PyLong_CheckExact(args[0])) { /* the index's bucket loads while the value pickles */
        prefetch_bucket(self->index_words, self->index_buffer.len,
                        PyLong_AsUnsignedLongLongMask(args[0]));
    }
    /* Checked before pickling, so that a put which cannot be fast pickles once, in Python. A
     * variable with a file of its own is written there when the handle maps it; any other
     * goes to a slot (slab.c). */
    PyObject *hot = mapped(self, args[0]); /* held: checking and pickling may drop the variable */
    if (hot == NULL) {
        PyErr_Clear();
    }
    if ((hot != NULL && PyObject_IsTrue(PyTuple_GET_ITEM(hot, 3)) != 1)
        || !plain(args[2], 0, &budget)) {
        Py_XDECREF(hot);
        return slow();
    }
    PyObject *pickled = plain_dumps(args[2]);
    if (pickled == NULL || !PyBytes_CheckExact(pickled)) {
        Py_XDECREF(pickled);
        Py_XDECREF(hot);
        return slow(); /* Python's encode() says why */
    }
    Py_ssize_t same_from = 0, same_to = 0;
    if (nargs >= 5) {
        same_from = PyLong_AsSsize_t(args[3]);
        Py_ssize_t size = PyBytes_GET_SIZE(args[4]);
        if (same_from < 0 || size == 0 || same_from > PyBytes_GET_SIZE(pickled) - size
            || memcmp(PyBytes_AS_STRING(pickled) + same_from, PyBytes_AS_STRING(args[4]),
                      (size_t)size) != 0) {
            Py_DECREF(pickled);
            Py_XDECREF(hot);
            return slow();
        }
        same_to = same_from + size;
    }
    /* A value a slot takes goes to one, whatever this handle maps (a file the variable had
     * before, retired since, say); slab_put answers SLOW for a variable that has a file. */
    PyObject *result;
    if ((uint64_t)PyBytes_GET_SIZE(pickled) + FRAME_HEADER + SLOT_HEADER <= SLOT_MAX) {
        result = slab_put(self, args[0], codec, pickled, same_from, same_to, or_absent);
    }
    else {
        result = hot != NULL ? put_pickled(self, hot, codec, pickled, same_from, same_to) : slow();
    }
    Py_DECREF(pickled);
    Py_XDECREF(hot);
    return result;
}
