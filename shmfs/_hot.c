/*
 * shmfs._hot: the tmpfs get and put of a small value, in C.
 *
 * Why it exists. A get in Python is a dozen interpreter-level steps (the handle's checks, the
 * seqlock, the frame's header and checksum, the unpickle) and costs about 1.5 us, against
 * lmdb's 0.6 us for one C call; a put pays as much again around its flock. This module does the
 * common case of each in one call and answers SLOW for everything else, which the Python code
 * in shmfs/backends/tmpfs.py and shmfs/backends/varfile.py then does as it always has. It
 * follows exactly the protocols documented there (the variable file's seqlock and control word,
 * the metadata's DIRTY word and counts, the segment's flock); it adds none of its own, so
 * Python and C readers and writers, in one process or many, mix freely.
 *
 * What counts as the common case:
 *   get: the handle has the variable mapped, no writer is mid-change (DIRTY clear), no
 *        recovery happened since the handle last looked, the published slot is consistent,
 *        the frame is unsigned, at most SMALL bytes, of a known codec, and passes its checks;
 *        a pickling codec only for a file a trusted uid wrote.
 *   put: the same mapping, writable; the segment lock is this thread's already (inside
 *        lock(), update(), a Cache's set) or had at once (flock with LOCK_NB); no DIRTY,
 *        recovery, views, waiters or destroy; the value fits its slot and the segment's size.
 * Anything else (damage included) is SLOW, and the Python path says precisely what is wrong.
 *
 * Threads. Every call runs start to end holding the GIL, so no other thread of this process
 * runs meanwhile; the segment lock's thread lock is taken (without waiting) as locking.py
 * takes it, so a put never writes beside another thread's locked section.
 * A build without a GIL (free-threaded CPython) does not build this module.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <unistd.h>
#include <zlib.h>

#if defined(Py_GIL_DISABLED)
#error "shmfs._hot relies on the GIL; the pure-Python path serves free-threaded builds"
#endif
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "shmfs's files are little-endian; the pure-Python path serves big-endian machines"
#endif

/* The variable file (varfile.py). */
#define VAR_HEADER 64
#define W_CONTROL 3
#define W_SEQ 4
#define W_LENGTH 6
#define RETIRED 0x80000000ULL
#define GENERATIONS 0x7FFFFFFFULL
#define LOW 0xFFFFFFFFULL
#define CHECK_MULTIPLIER 0x9E3779B1ULL
#define CHECK_MASK 0x5BD1E995ULL

/* The segment's metadata page (segdir.py). */
#define M_SIZE 3
#define M_STATE 5
#define M_USED 6
#define M_GENERATION 10
#define M_WAITERS 11
#define M_RECOVERIES 12
#define M_VIEWS 13
#define M_WORDS 14

/* The frame (codecs.py): magic, version, codec, flags, reserved; length; crc32, reserved. */
#define FRAME_HEADER 24
#define CODEC_SHIFT 40
/* Frames above this go the Python way: large values are read in pieces or into a reused buffer
 * there, and their checksum covers only their ends (codecs.FULL_CHECK_LIMIT). */
#define SMALL (64 * 1024)

/* The frame's checksum is zlib's crc32 (codecs.py). zlib computes it fastest on long buffers,
 * but on the short frames most gets and puts carry its set-up dominates: below SHORT_CRC bytes
 * eight-byte slicing by tables is up to three times faster (measured here: 39 ns against 124 at
 * 64 bytes, 67 against 108 at 128; level at about 320, zlib ahead past it). Checked against
 * zlib.crc32 (tests/test_hotpath.py). */
#define SHORT_CRC 320
static uint32_t crc_table[8][256];

static void
crc_init(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) {
            c = c & 1 ? 0xEDB88320U ^ (c >> 1) : c >> 1;
        }
        crc_table[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = crc_table[0][n];
        for (int k = 1; k < 8; k++) {
            c = crc_table[0][c & 0xFF] ^ (c >> 8);
            crc_table[k][n] = c;
        }
    }
}

static uint32_t
crc32_sliced(uint32_t crc, const unsigned char *bytes, size_t length)
{
    crc = ~crc;
    for (; length >= 8; bytes += 8, length -= 8) {
        uint64_t word;
        memcpy(&word, bytes, 8); /* little-endian, checked above */
        uint32_t low = (uint32_t)word ^ crc, high = (uint32_t)(word >> 32);
        crc = crc_table[7][low & 0xFF] ^ crc_table[6][(low >> 8) & 0xFF]
              ^ crc_table[5][(low >> 16) & 0xFF] ^ crc_table[4][low >> 24]
              ^ crc_table[3][high & 0xFF] ^ crc_table[2][(high >> 8) & 0xFF]
              ^ crc_table[1][(high >> 16) & 0xFF] ^ crc_table[0][high >> 24];
    }
    while (length--) {
        crc = crc_table[0][(crc ^ *bytes++) & 0xFF] ^ (crc >> 8);
    }
    return ~crc;
}

static uint32_t
checksum(uint32_t crc, const unsigned char *bytes, size_t length)
{
    if (length < SHORT_CRC) {
        return crc32_sliced(crc, bytes, length);
    }
    return (uint32_t)crc32_z(crc, bytes, length);
}

PyDoc_STRVAR(crc32_doc,
"crc32(data, value=0) -> int\n\n"
"zlib.crc32, as the fast path computes it (for tests: the two must agree).");

static PyObject *
hot_crc32(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "crc32(data, value=0)");
        return NULL;
    }
    unsigned long value = nargs == 2 ? PyLong_AsUnsignedLongMask(args[1]) : 0;
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_buffer data;
    if (PyObject_GetBuffer(args[0], &data, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    uint32_t crc = checksum((uint32_t)value, data.buf, (size_t)data.len);
    PyBuffer_Release(&data);
    return PyLong_FromUnsignedLong(crc);
}

static PyMethodDef module_methods[] = {
    {"crc32", (PyCFunction)(void (*)(void))hot_crc32, METH_FASTCALL, crc32_doc},
    {NULL, NULL, 0, NULL},
};

/* Bumped in every forked child: handles see that they must reopen what they share. */
static uint64_t fork_epoch = 0;

static void
after_fork_in_child(void)
{
    fork_epoch++;
}

static inline uint64_t
load(const uint64_t *word)
{
    return __atomic_load_n(word, __ATOMIC_ACQUIRE);
}

static inline void
store(uint64_t *word, uint64_t value)
{
    __atomic_store_n(word, value, __ATOMIC_RELEASE);
}

static inline uint64_t
check_of(uint64_t high)
{
    return ((high * CHECK_MULTIPLIER) & LOW) ^ CHECK_MASK;
}

typedef struct {
    PyObject_HEAD
    PyObject *vars;    /* the backend's dict: index -> VarFile */
    PyObject *meta;    /* the metadata page, a memoryview */
    PyObject *lock;    /* the backend's SegmentLock: its _depth says whether this process holds it */
    PyObject *acquire; /* its thread lock's acquire and release, bound */
    PyObject *release;
    PyObject *decoders[256];  /* codec id -> decode callable, or NULL */
    char executes[256];       /* codec id -> whether decoding runs code (pickle) */
    uint64_t first_word;      /* a frame's first word with the codec byte zeroed */
    uint64_t recoveries;      /* the RECOVERIES count the backend's mappings belong to */
    uint64_t dirty_tag;       /* DIRTY | pid << 32 */
    uint64_t epoch;
    int fd;                   /* the metadata file, which the segment's flock is on */
} Hot;

static PyObject *SLOW; /* "do it the Python way" */
static PyObject *pickle_dumps; /* pickle.dumps, and the protocol shmfs writes (codecs._PROTOCOL) */
static PyObject *protocol;
static PyObject *str_hot;
static PyObject *str_depth;
static PyObject *str_fd;
static PyObject *str_thread_lock;

/* A mapped buffer's base and length; NULL (no exception) if it was released. */
static uint64_t *
words_of(PyObject *view, Py_buffer *buffer, Py_ssize_t need)
{
    if (PyObject_GetBuffer(view, buffer, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        return NULL;
    }
    if (buffer->len < need || ((uintptr_t)buffer->buf & 7) != 0) {
        PyBuffer_Release(buffer);
        return NULL;
    }
    return (uint64_t *)buffer->buf;
}

/* (words, capacity, trusted, writable) of a mapped variable; borrowed, or NULL if absent. */
static PyObject *
mapped(Hot *self, PyObject *index)
{
    PyObject *var = PyDict_GetItemWithError(self->vars, index);
    if (var == NULL) {
        return NULL;
    }
    PyObject *hot = PyObject_GetAttr(var, str_hot);
    if (hot == NULL) {
        return NULL;
    }
    Py_DECREF(hot); /* the VarFile in the dict keeps it alive while we run */
    if (!PyTuple_CheckExact(hot) || PyTuple_GET_SIZE(hot) != 4) {
        return NULL;
    }
    return hot;
}

static PyObject *
slow(void)
{
    if (PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            return NULL; /* KeyboardInterrupt and the like are not ours to swallow */
        }
        PyErr_Clear();
    }
    return Py_NewRef(SLOW);
}

static int
metadata(Hot *self, uint64_t *state, uint64_t *recoveries)
{
    Py_buffer buffer;
    uint64_t *meta = words_of(self->meta, &buffer, M_WORDS * 8);
    if (meta == NULL) {
        return -1;
    }
    *state = load(&meta[M_STATE]);
    *recoveries = load(&meta[M_RECOVERIES]);
    PyBuffer_Release(&buffer);
    return 0;
}

PyDoc_STRVAR(hot_get_doc,
"get(index) -> the value, or SLOW\n\n"
"Read and decode a small value of a mapped variable without a lock (varfile.py's seqlock).");

static PyObject *
hot_get(Hot *self, PyObject *index)
{
    uint64_t state, recoveries;
    if (self->lock == NULL || self->epoch != fork_epoch
        || metadata(self, &state, &recoveries) < 0) {
        return slow();
    }
    if (state & 2 || recoveries != self->recoveries) {
        return slow(); /* DIRTY: the Python path asks whether that writer is alive */
    }
    PyObject *hot = mapped(self, index);
    if (hot == NULL) {
        return slow();
    }
    Py_ssize_t capacity = PyLong_AsSsize_t(PyTuple_GET_ITEM(hot, 1));
    int trusted = PyObject_IsTrue(PyTuple_GET_ITEM(hot, 2));
    if (capacity <= 0 || trusted < 0) {
        return slow();
    }
    Py_buffer buffer;
    uint64_t *words = words_of(PyTuple_GET_ITEM(hot, 0), &buffer, VAR_HEADER + 2 * capacity);
    if (words == NULL) {
        return slow();
    }
    uint64_t control = load(&words[W_CONTROL]);
    uint64_t high = control >> 32;
    uint64_t slot = high & 1;
    uint64_t seq = high * 2;
    uint64_t length = load(&words[W_LENGTH + slot]);
    if ((control & LOW) != check_of(high) || high & RETIRED || load(&words[W_SEQ + slot]) != seq
        || length < FRAME_HEADER || length > SMALL || length > (uint64_t)capacity) {
        PyBuffer_Release(&buffer);
        return slow();
    }
    const unsigned char *frame = (const unsigned char *)words + VAR_HEADER + slot * capacity;
    uint64_t head[3];
    PyObject *payload = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(length - FRAME_HEADER));
    if (payload == NULL) {
        PyBuffer_Release(&buffer);
        return NULL;
    }
    memcpy(head, frame, FRAME_HEADER);
    memcpy(PyBytes_AS_STRING(payload), frame + FRAME_HEADER, length - FRAME_HEADER);
    /* The copies happen before the sequence word is read again (a seqlock's read side). */
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    uint64_t after = load(&words[W_SEQ + slot]);
    PyBuffer_Release(&buffer);
    if (after != seq) {
        Py_DECREF(payload);
        return slow(); /* a writer reused the slot: Python copies again */
    }
    /* head[0]: the first word; head[1]: the payload's length; head[2]: crc32 and a zero word. */
    unsigned codec = (unsigned)(head[0] >> CODEC_SHIFT) & 0xFF;
    PyObject *decode = self->decoders[codec];
    uint64_t crc = checksum(checksum(0, (const unsigned char *)head, 16),
                         (const unsigned char *)PyBytes_AS_STRING(payload), length - FRAME_HEADER);
    if ((head[0] & ~(0xFFULL << CODEC_SHIFT)) != self->first_word || decode == NULL
        || head[1] != length - FRAME_HEADER || head[2] != crc
        || (self->executes[codec] && !trusted)) {
        Py_DECREF(payload);
        return slow(); /* damage, a signature, or an untrusted writer: Python says which */
    }
    PyObject *value = PyObject_CallOneArg(decode, payload);
    Py_DECREF(payload);
    return value != NULL ? value : slow(); /* Python reports a decoder's failure */
}

static int thread_unlock(Hot *self);

/* Takes the segment lock's thread lock without waiting. 1: had at depth 0, so the file lock is
 * ours to take; 2: had re-entrantly, so this thread already holds the segment lock (in lock(),
 * update(), a Cache's set), file lock included; 0: another thread has it; -1: an exception. */
static int
thread_lock(Hot *self)
{
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
     * lock); deeper, this thread does. */
    PyObject *depth = PyObject_GetAttr(self->lock, str_depth);
    long held = depth != NULL ? PyLong_AsLong(depth) : -1;
    Py_XDECREF(depth);
    if (held >= 0 && !PyErr_Occurred()) {
        return held == 0 ? 1 : 2;
    }
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback); /* no Python call with an exception pending */
    int unlocked = thread_unlock(self);
    if (unlocked == 0) {
        PyErr_Restore(type, value, traceback);
    }
    else {
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(traceback);
    }
    if (!PyErr_Occurred()) {
        PyErr_SetString(PyExc_RuntimeError, "the segment lock's depth is negative");
    }
    return -1;
}

static int
thread_unlock(Hot *self)
{
    PyObject *done = PyObject_CallNoArgs(self->release);
    Py_XDECREF(done);
    return done != NULL ? 0 : -1;
}

/* The put of a pickled value; ``same_to`` > 0: only over a stored pickle with the same bytes in
 * [same_from, same_to). */
static PyObject *
put_pickled(Hot *self, PyObject *index, long codec, PyObject *pickled, Py_ssize_t same_from,
            Py_ssize_t same_to)
{
    Py_ssize_t payload_length = PyBytes_GET_SIZE(pickled);
    uint64_t length = (uint64_t)payload_length + FRAME_HEADER;
    if (self->lock == NULL || self->epoch != fork_epoch || length > SMALL) {
        return slow();
    }
    PyObject *hot = mapped(self, index);
    if (hot == NULL || PyObject_IsTrue(PyTuple_GET_ITEM(hot, 3)) != 1) {
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

    Py_buffer meta_buffer, var_buffer;
    uint64_t *meta = words_of(self->meta, &meta_buffer, M_WORDS * 8);
    if (meta == NULL) {
        return slow();
    }
    uint64_t *words = words_of(PyTuple_GET_ITEM(hot, 0), &var_buffer, VAR_HEADER + 2 * capacity);
    if (words == NULL) {
        PyBuffer_Release(&meta_buffer);
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
    if (taken == 1 && flock(self->fd, LOCK_EX | LOCK_NB) != 0) {
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
        || used - old + length > size) {
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
    /* tmpfs.py's write and varfile.py's VarFile.write, store for store. */
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
    store(&meta[M_USED], used - old + length);
    store(&meta[M_GENERATION], load(&meta[M_GENERATION]) + 1);
    store(&meta[M_STATE], 0);
    result = Py_None;
unlock:
    if (taken == 1 && flock(self->fd, LOCK_UN) != 0) {
        /* Cannot happen on a descriptor we just locked; if it did, say so loudly. */
        PyErr_SetFromErrno(PyExc_OSError);
        result = NULL;
    }
unlock_thread:
    if (thread_unlock(self) < 0) {
        result = NULL;
    }
done:
    PyBuffer_Release(&var_buffer);
    PyBuffer_Release(&meta_buffer);
    return result != NULL ? Py_NewRef(result) : NULL;
}

/* codecs._is_plain, check for check (builtin scalars in builtin containers of at most 64 items,
 * nested at most 4 deep), within a budget: each item costs one, and each str or bytes its length,
 * so that a value too big for the fast path is not pickled only to be pickled again. Runs no
 * Python code, so nothing changes under it. */
static int
plain(PyObject *value, int depth, Py_ssize_t *budget)
{
    PyTypeObject *kind = Py_TYPE(value);
    *budget -= 1;
    if (kind == &PyUnicode_Type) {
        *budget -= PyUnicode_GET_LENGTH(value);
        return *budget >= 0;
    }
    if (kind == &PyBytes_Type) {
        *budget -= PyBytes_GET_SIZE(value);
        return *budget >= 0;
    }
    if (kind == &PyLong_Type || kind == &PyFloat_Type || kind == &PyBool_Type || value == Py_None) {
        return *budget >= 0;
    }
    if (depth > 3) {
        return 0;
    }
    if (kind == &PyList_Type || kind == &PyTuple_Type) {
        Py_ssize_t size = PySequence_Fast_GET_SIZE(value);
        if (size > 64) {
            return 0;
        }
        for (Py_ssize_t i = 0; i < size; i++) {
            if (!plain(PySequence_Fast_GET_ITEM(value, i), depth + 1, budget)) {
                return 0;
            }
        }
        return 1;
    }
    if (kind == &PyDict_Type) {
        if (PyDict_GET_SIZE(value) > 64) {
            return 0;
        }
        Py_ssize_t at = 0;
        PyObject *key, *item;
        while (PyDict_Next(value, &at, &key, &item)) {
            if (!plain(key, depth + 1, budget) || !plain(item, depth + 1, budget)) {
                return 0;
            }
        }
        return 1;
    }
    if (kind == &PySet_Type || kind == &PyFrozenSet_Type) {
        if (PySet_GET_SIZE(value) > 64) {
            return 0;
        }
        PyObject *items = PyObject_GetIter(value);
        if (items == NULL) {
            PyErr_Clear();
            return 0;
        }
        PyObject *item;
        int result = 1;
        while (result && (item = PyIter_Next(items)) != NULL) {
            result = plain(item, depth + 1, budget);
            Py_DECREF(item);
        }
        Py_DECREF(items);
        if (PyErr_Occurred()) {
            PyErr_Clear();
            return 0;
        }
        return result;
    }
    return 0;
}

PyDoc_STRVAR(hot_put_doc,
"put(index, codec_id, value[, head_at, head]) -> None, or SLOW\n\n"
"Store a plain value (codecs._is_plain: what both pickling codecs write with pickle itself)\n"
"in place in a mapped variable, under the segment's flock taken without waiting (tmpfs.py's\n"
"write). With ``head_at`` and ``head``: only if the value's pickle has the bytes ``head`` at\n"
"``head_at``, and so has the pickle stored now, framed by the same codec (a Cache's set:\n"
"over the entry of the same key only).");

static PyObject *
hot_put(Hot *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 && !(nargs == 5 && PyBytes_CheckExact(args[4]))) {
        PyErr_SetString(PyExc_TypeError, "put(index, codec_id, value[, head_at, head: bytes])");
        return NULL;
    }
    long codec = PyLong_AsLong(args[1]);
    if (codec == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t budget = SMALL;
    if (codec < 0 || codec > 255 || !self->executes[codec] || self->lock == NULL
        || self->epoch != fork_epoch || PyDict_GetItemWithError(self->vars, args[0]) == NULL
        || !plain(args[2], 0, &budget)) {
        return slow(); /* before pickling: a put that cannot be fast pickles once, in Python */
    }
    PyObject *dumps_args[2] = {args[2], protocol};
    PyObject *pickled = PyObject_Vectorcall(pickle_dumps, dumps_args, 2, NULL);
    if (pickled == NULL) {
        return slow(); /* Python's encode() says why */
    }
    if (!PyBytes_CheckExact(pickled)) {
        Py_DECREF(pickled);
        return slow();
    }
    Py_ssize_t same_from = 0, same_to = 0;
    if (nargs == 5) {
        same_from = PyLong_AsSsize_t(args[3]);
        Py_ssize_t size = PyBytes_GET_SIZE(args[4]);
        if (same_from < 0 || size == 0 || same_from > PyBytes_GET_SIZE(pickled) - size
            || memcmp(PyBytes_AS_STRING(pickled) + same_from, PyBytes_AS_STRING(args[4]),
                      (size_t)size) != 0) {
            Py_DECREF(pickled);
            return slow();
        }
        same_to = same_from + size;
    }
    PyObject *result = put_pickled(self, args[0], codec, pickled, same_from, same_to);
    Py_DECREF(pickled);
    return result;
}

PyDoc_STRVAR(hot_reset_doc,
"reset(lock, recoveries, dirty_tag)\n\n"
"Say which SegmentLock guards the segment (its file descriptor is the flock's), which\n"
"RECOVERIES count the backend's mappings belong to, and the DIRTY word its writes store;\n"
"also after a fork, which this call acknowledges. Until the first reset, every call is SLOW.");

static PyObject *
hot_reset(Hot *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "reset(lock, recoveries, dirty_tag)");
        return NULL;
    }
    uint64_t recoveries = PyLong_AsUnsignedLongLong(args[1]);
    uint64_t dirty_tag = PyLong_AsUnsignedLongLong(args[2]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    PyObject *fd = PyObject_GetAttr(args[0], str_fd);
    long descriptor = fd != NULL ? PyLong_AsLong(fd) : -1;
    Py_XDECREF(fd);
    if (PyErr_Occurred()) {
        return NULL;
    }
    PyObject *thread = PyObject_GetAttr(args[0], str_thread_lock);
    if (thread == NULL) {
        return NULL;
    }
    PyObject *acquire = PyObject_GetAttrString(thread, "acquire");
    PyObject *release = PyObject_GetAttrString(thread, "release");
    Py_DECREF(thread);
    if (acquire == NULL || release == NULL || descriptor < 0 || descriptor > INT32_MAX) {
        Py_XDECREF(acquire);
        Py_XDECREF(release);
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "reset: the lock's descriptor is not open");
        }
        return NULL;
    }
    Py_XSETREF(self->lock, Py_NewRef(args[0]));
    Py_XSETREF(self->acquire, acquire);
    Py_XSETREF(self->release, release);
    self->recoveries = recoveries;
    self->dirty_tag = dirty_tag;
    self->fd = (int)descriptor;
    self->epoch = fork_epoch;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(hot_close_doc, "close()\n\nDrop every reference: from now on, every call is SLOW.");

static PyObject *
hot_close(Hot *self, PyObject *Py_UNUSED(ignored))
{
    Py_CLEAR(self->vars);
    Py_CLEAR(self->meta);
    Py_CLEAR(self->lock);
    Py_CLEAR(self->acquire);
    Py_CLEAR(self->release);
    Py_RETURN_NONE;
}

static int
hot_init(Hot *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"vars", "meta", "decoders", "first_word", NULL};
    PyObject *vars, *meta, *decoders;
    unsigned long long first_word;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!OO!K", names, &PyDict_Type, &vars, &meta,
                                     &PyDict_Type, &decoders, &first_word)) {
        return -1;
    }
    if (first_word & (0xFFULL << CODEC_SHIFT)) {
        PyErr_SetString(PyExc_ValueError, "first_word must have its codec byte zero");
        return -1;
    }
    PyObject *id, *entry;
    Py_ssize_t at = 0;
    while (PyDict_Next(decoders, &at, &id, &entry)) {
        long codec = PyLong_AsLong(id);
        if (codec < 0 || codec > 255 || !PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 2) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_ValueError,
                                "decoders: {codec id 0-255: (decode, executes_code)}");
            }
            return -1;
        }
        int executes = PyObject_IsTrue(PyTuple_GET_ITEM(entry, 1));
        if (executes < 0) {
            return -1;
        }
        Py_XSETREF(self->decoders[codec], Py_NewRef(PyTuple_GET_ITEM(entry, 0)));
        self->executes[codec] = (char)executes;
    }
    Py_XSETREF(self->vars, Py_NewRef(vars));
    Py_XSETREF(self->meta, Py_NewRef(meta));
    self->first_word = first_word;
    self->epoch = fork_epoch;
    self->fd = -1;
    return 0;
}

static int
hot_traverse(Hot *self, visitproc visit, void *arg)
{
    Py_VISIT(self->vars);
    Py_VISIT(self->meta);
    Py_VISIT(self->lock);
    Py_VISIT(self->acquire);
    Py_VISIT(self->release);
    for (int i = 0; i < 256; i++) {
        Py_VISIT(self->decoders[i]);
    }
    return 0;
}

static int
hot_clear(Hot *self)
{
    Py_CLEAR(self->vars);
    Py_CLEAR(self->meta);
    Py_CLEAR(self->lock);
    Py_CLEAR(self->acquire);
    Py_CLEAR(self->release);
    for (int i = 0; i < 256; i++) {
        Py_CLEAR(self->decoders[i]);
    }
    return 0;
}

static void
hot_dealloc(Hot *self)
{
    PyObject_GC_UnTrack(self);
    hot_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef hot_methods[] = {
    {"get", (PyCFunction)hot_get, METH_O, hot_get_doc},
    {"put", (PyCFunction)(void (*)(void))hot_put, METH_FASTCALL, hot_put_doc},
    {"reset", (PyCFunction)(void (*)(void))hot_reset, METH_FASTCALL, hot_reset_doc},
    {"close", (PyCFunction)hot_close, METH_NOARGS, hot_close_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(hot_doc,
"Hot(vars, meta, decoders, first_word)\n\n"
"The C get and put of one tmpfs segment handle (see shmfs/hotpath.py).");

static PyTypeObject HotType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmfs._hot.Hot",
    .tp_basicsize = sizeof(Hot),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = hot_doc,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)hot_init,
    .tp_dealloc = (destructor)hot_dealloc,
    .tp_traverse = (traverseproc)hot_traverse,
    .tp_clear = (inquiry)hot_clear,
    .tp_methods = hot_methods,
};

/* ---------------------------------------------------------------------------------------------
 * Mapping: a shared mapping of a file that keeps no descriptor.
 *
 * Before Python 3.13, every mmap.mmap holds a dup of its file's descriptor, so a handle could
 * keep only a sixteenth of RLIMIT_NOFILE mapped (256 under the common 1024). A mapping needs no
 * descriptor once made; this is the part of mmap.mmap that varfile.py uses (slices copied out
 * as bytes, slice assignment, the buffer protocol, close), without one.
 */

typedef struct {
    PyObject_HEAD
    char *data; /* NULL once closed */
    Py_ssize_t size;
    Py_ssize_t exports;
    int writable;
} Mapping;

static int
mapping_init(Mapping *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"fd", "size", "writable", NULL};
    int fd, writable;
    Py_ssize_t size;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "inp", names, &fd, &size, &writable)) {
        return -1;
    }
    if (self->data != NULL) {
        PyErr_SetString(PyExc_ValueError, "Mapping is already mapped");
        return -1;
    }
    if (size <= 0) {
        PyErr_SetString(PyExc_ValueError, "Mapping: size must be positive");
        return -1;
    }
    int protection = PROT_READ | (writable ? PROT_WRITE : 0);
    void *data = mmap(NULL, (size_t)size, protection, MAP_SHARED, fd, 0);
    if (data == MAP_FAILED) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    self->data = data;
    self->size = size;
    self->writable = writable;
    return 0;
}

static void
mapping_dealloc(Mapping *self)
{
    if (self->data != NULL) {
        munmap(self->data, (size_t)self->size); /* no exports: each would hold a reference */
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
mapping_open(Mapping *self)
{
    if (self->data == NULL) {
        PyErr_SetString(PyExc_ValueError, "mmap closed or invalid");
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(mapping_close_doc, "close()\n\nUnmap; BufferError while views of it exist.");

static PyObject *
mapping_close(Mapping *self, PyObject *Py_UNUSED(ignored))
{
    if (self->exports > 0) {
        PyErr_SetString(PyExc_BufferError, "cannot close exported pointers exist");
        return NULL;
    }
    if (self->data != NULL) {
        munmap(self->data, (size_t)self->size);
        self->data = NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
mapping_closed(Mapping *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->data == NULL);
}

static Py_ssize_t
mapping_length(Mapping *self)
{
    return mapping_open(self) < 0 ? -1 : self->size;
}

/* [start, start + length) of a slice of step 1, or -1 with an exception. */
static int
mapping_range(Mapping *self, PyObject *item, Py_ssize_t *start, Py_ssize_t *length)
{
    if (!PySlice_Check(item)) {
        PyErr_SetString(PyExc_TypeError, "Mapping indices must be slices");
        return -1;
    }
    Py_ssize_t stop, step;
    if (PySlice_Unpack(item, start, &stop, &step) < 0) {
        return -1;
    }
    if (step != 1) {
        PyErr_SetString(PyExc_ValueError, "Mapping slices must have step 1");
        return -1;
    }
    *length = PySlice_AdjustIndices(self->size, start, &stop, step);
    return 0;
}

static PyObject *
mapping_subscript(Mapping *self, PyObject *item)
{
    Py_ssize_t start, length;
    if (mapping_open(self) < 0 || mapping_range(self, item, &start, &length) < 0) {
        return NULL;
    }
    return PyBytes_FromStringAndSize(self->data + start, length);
}

static int
mapping_ass_subscript(Mapping *self, PyObject *item, PyObject *value)
{
    Py_ssize_t start, length;
    if (mapping_open(self) < 0 || mapping_range(self, item, &start, &length) < 0) {
        return -1;
    }
    if (!self->writable) {
        PyErr_SetString(PyExc_TypeError, "mmap can't modify a readonly memory map.");
        return -1;
    }
    if (value == NULL) {
        PyErr_SetString(PyExc_TypeError, "mmap object doesn't support item deletion");
        return -1;
    }
    Py_buffer source;
    if (PyObject_GetBuffer(value, &source, PyBUF_SIMPLE) < 0) {
        return -1;
    }
    if (source.len != length) {
        PyBuffer_Release(&source);
        PyErr_SetString(PyExc_IndexError, "mmap slice assignment is wrong size");
        return -1;
    }
    memcpy(self->data + start, source.buf, (size_t)length);
    PyBuffer_Release(&source);
    return 0;
}

static int
mapping_getbuffer(Mapping *self, Py_buffer *view, int flags)
{
    if (mapping_open(self) < 0) {
        view->obj = NULL;
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)self, self->data, self->size, !self->writable, flags)
        < 0) {
        return -1;
    }
    self->exports++;
    return 0;
}

static void
mapping_releasebuffer(Mapping *self, Py_buffer *Py_UNUSED(view))
{
    self->exports--;
}

static PyMethodDef mapping_methods[] = {
    {"close", (PyCFunction)mapping_close, METH_NOARGS, mapping_close_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef mapping_getset[] = {
    {"closed", (getter)mapping_closed, NULL, "Whether it was unmapped.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMappingMethods mapping_as_mapping = {
    .mp_length = (lenfunc)mapping_length,
    .mp_subscript = (binaryfunc)mapping_subscript,
    .mp_ass_subscript = (objobjargproc)mapping_ass_subscript,
};

static PyBufferProcs mapping_as_buffer = {
    .bf_getbuffer = (getbufferproc)mapping_getbuffer,
    .bf_releasebuffer = (releasebufferproc)mapping_releasebuffer,
};

PyDoc_STRVAR(mapping_doc,
"Mapping(fd, size, writable)\n\n"
"A MAP_SHARED mapping of ``size`` bytes of the open file ``fd`` that keeps no descriptor:\n"
"close ``fd`` at once. Slices copy out as bytes; slice assignment writes; the buffer\n"
"protocol hands out the memory; close() unmaps (BufferError while views exist).");

static PyTypeObject MappingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmfs._hot.Mapping",
    .tp_basicsize = sizeof(Mapping),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = mapping_doc,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)mapping_init,
    .tp_dealloc = (destructor)mapping_dealloc,
    .tp_methods = mapping_methods,
    .tp_getset = mapping_getset,
    .tp_as_mapping = &mapping_as_mapping,
    .tp_as_buffer = &mapping_as_buffer,
};

static struct PyModuleDef hot_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "shmfs._hot",
    .m_doc = "The tmpfs backend's get and put of small values, in C (see shmfs/hotpath.py).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__hot(void)
{
    crc_init();
    if (PyType_Ready(&HotType) < 0 || PyType_Ready(&MappingType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&hot_module);
    if (module == NULL) {
        return NULL;
    }
    SLOW = PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type);
    PyObject *pickle = PyImport_ImportModule("pickle");
    pickle_dumps = pickle != NULL ? PyObject_GetAttrString(pickle, "dumps") : NULL;
    Py_XDECREF(pickle);
    protocol = PyLong_FromLong(5);
    str_hot = PyUnicode_InternFromString("hot");
    str_depth = PyUnicode_InternFromString("_depth");
    str_fd = PyUnicode_InternFromString("_fd");
    str_thread_lock = PyUnicode_InternFromString("_thread_lock");
    if (SLOW == NULL || pickle_dumps == NULL || protocol == NULL || str_hot == NULL || str_depth == NULL || str_fd == NULL
        || str_thread_lock == NULL
        || PyModule_AddObjectRef(module, "SLOW", SLOW) < 0
        || PyModule_AddObjectRef(module, "Hot", (PyObject *)&HotType) < 0
        || PyModule_AddObjectRef(module, "Mapping", (PyObject *)&MappingType) < 0
        || pthread_atfork(NULL, NULL, after_fork_in_child) != 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
