/* shmfs._hot.Hot: one tmpfs handle's fast path (see module.c); its get, and what it holds. */
#include "hot.h"

#include <string.h>

/* A mapped buffer's base and length; NULL (no exception) if it was released. */
uint64_t *
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

/* (words, capacity, trusted, writable) of a mapped large variable: a new reference (the
 * handle may drop its VarFile while the caller still reads), or NULL if absent. */
PyObject *
mapped(Hot *self, PyObject *index)
{
    if (self->vars == NULL) {
        return NULL; /* closed */
    }
    PyObject *var = PyDict_GetItemWithError(self->vars, index);
    if (var == NULL) {
        return NULL;
    }
    Py_INCREF(var); /* held while its attribute is read */
    PyObject *hot = PyObject_GetAttr(var, str_hot);
    Py_DECREF(var);
    if (hot != NULL && (!PyTuple_CheckExact(hot) || PyTuple_GET_SIZE(hot) != 4)) {
        Py_CLEAR(hot);
    }
    return hot;
}

PyObject *
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


/* The codecs a get decodes: ``decoders`` is {codec id: (decode, executes_code, failure)}
 * (hotpath._DECODERS), taken into the three tables. 0, or -1 with an exception set. */
int
take_decoders(PyObject *decoders, PyObject *decode[256], PyObject *failures[256], char executes[256])
{
    PyObject *id, *entry;
    Py_ssize_t at = 0;
    while (PyDict_Next(decoders, &at, &id, &entry)) {
        long codec = PyLong_AsLong(id);
        if (codec < 0 || codec > 255 || !PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 3) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_ValueError,
                                "decoders: {codec id 0-255: (decode, executes_code, failure)}");
            }
            return -1;
        }
        int code = PyObject_IsTrue(PyTuple_GET_ITEM(entry, 1));
        if (code < 0) {
            return -1;
        }
        Py_XSETREF(decode[codec], Py_NewRef(PyTuple_GET_ITEM(entry, 0)));
        Py_XSETREF(failures[codec], Py_NewRef(PyTuple_GET_ITEM(entry, 2)));
        executes[codec] = (char)code;
    }
    return 0;
}

/* ``lock`` checked to be a LockInterface (locking.py), and an export of its state words in
 * ``buffer`` (the caller releases it). 0, or -1 with an exception set. */
int
lock_interface_words(PyObject *lock, Py_buffer *buffer)
{
    if (!PyTuple_Check(lock) || PyTuple_GET_SIZE(lock) != 4 || !PyCallable_Check(PyTuple_GET_ITEM(lock, 0))
        || !PyCallable_Check(PyTuple_GET_ITEM(lock, 1)) || !PyCallable_Check(PyTuple_GET_ITEM(lock, 3))) {
        PyErr_SetString(PyExc_TypeError, "reset: lock must be a LockInterface");
        return -1;
    }
    if (PyObject_GetBuffer(PyTuple_GET_ITEM(lock, 2), buffer, PyBUF_FORMAT) < 0) {
        return -1;
    }
    if (buffer->len != LOCK_WORDS * 8 || buffer->itemsize != 8 || buffer->format == NULL
        || strcmp(buffer->format, "q") != 0 || ((uintptr_t)buffer->buf & 7) != 0) {
        PyBuffer_Release(buffer);
        PyErr_SetString(PyExc_ValueError, "reset: the lock's words are not its state words");
        return -1;
    }
    return 0;
}

/* A decoder raised: raise instead what Python's get raises for that (``failed``, the codec's
 * ``failures`` entry, makes it: a SerializationError, from the decoder's error).
 * KeyboardInterrupt and the like stand as they are. NULL, always. */
PyObject *
decode_failed_as(PyObject *failed)
{
    if (failed == NULL || !PyErr_ExceptionMatches(PyExc_Exception)) {
        return NULL;
    }
    PyObject *type, *raised, *traceback;
    PyErr_Fetch(&type, &raised, &traceback); /* no Python call with an exception pending */
    PyErr_NormalizeException(&type, &raised, &traceback);
    if (traceback != NULL) {
        PyException_SetTraceback(raised, traceback);
    }
    Py_INCREF(failed); /* held across the call */
    PyObject *error = PyObject_CallOneArg(failed, raised);
    Py_DECREF(failed);
    if (error == NULL || error == raised || !PyExceptionInstance_Check(error)) {
        if (error != NULL && error != raised) {
            PyErr_SetString(PyExc_TypeError, "a codec's failure must be an exception");
        }
        Py_XDECREF(error);
        if (PyErr_Occurred()) { /* the translation's own error stands */
            Py_XDECREF(type);
            Py_XDECREF(raised);
            Py_XDECREF(traceback);
        }
        else {
            PyErr_Restore(type, raised, traceback);
        }
        return NULL;
    }
    PyException_SetCause(error, raised); /* raise error from raised: steals the reference */
    PyErr_SetObject((PyObject *)Py_TYPE(error), error);
    Py_DECREF(error);
    Py_XDECREF(type);
    Py_XDECREF(traceback);
    return NULL;
}

PyObject *
decode_frame(Hot *self, const uint64_t head[3], PyObject *payload, int trusted)
{
    /* head[0]: the first word; head[1]: the payload's length; head[2]: crc32 and a zero word. */
    unsigned codec = (unsigned)(head[0] >> CODEC_SHIFT) & 0xFF;
    PyObject *decode = self->decoders[codec];
    Py_ssize_t length = PyBytes_GET_SIZE(payload);
    uint64_t crc = checksum(checksum(0, (const unsigned char *)head, 16),
                            (const unsigned char *)PyBytes_AS_STRING(payload), (size_t)length);
    if ((head[0] & ~(0xFFULL << CODEC_SHIFT)) != self->first_word || decode == NULL
        || head[1] != (uint64_t)length || head[2] != crc || (self->executes[codec] && !trusted)) {
        Py_DECREF(payload);
        return slow(); /* damage, a signature, or an untrusted writer: Python says which */
    }
    return decode_with(decode, self->failures[codec], payload);
}

PyObject *
decode_with(PyObject *decode, PyObject *failed, PyObject *payload)
{
    if (decode == pickle_loads) { /* a plain value's pickle is read here, in a fifth of the time */
        PyObject *value = plain_loads(PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload));
        if (value != NULL || (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_Exception))) {
            Py_DECREF(payload);
            return value;
        }
        PyErr_Clear(); /* declined (bad bytes included): pickle.loads reads it, and says what is wrong */
    }
    Py_INCREF(decode); /* held across the call, which runs code that may close this handle */
    Py_XINCREF(failed);
    PyObject *value = PyObject_CallOneArg(decode, payload);
    Py_DECREF(decode);
    Py_DECREF(payload);
    if (value == NULL && failed != NULL) {
        /* One decode per get: a decoder that failed here is not run again by Python (a pickle's
         * side effects would run twice); its failure is this get's error, as Python says it. */
        value = decode_failed_as(failed);
    }
    else if (value == NULL) {
        value = slow(); /* no failure to raise as (PHP's bare values): Python reports it */
    }
    Py_XDECREF(failed);
    return value;
}

/* A frame over SMALL that holds one bytes value, as frame.py's body_at and _check_split read
 * it: the value copied once, straight out of the mapping into the bytes the get returns, then
 * the seqlock's check, then the checksum over the copy's ends. Any other large frame, or a
 * copy that fails a check: SLOW (Python reads it again, and says what is wrong). */
static PyObject *
split_get(Hot *self, const unsigned char *frame, uint64_t length, const uint64_t *seq_word,
          uint64_t seq)
{
    /* The header, and the pickle's opcodes up to its value: PROTO 5, then BINBYTES and a 4-byte
     * length or BINBYTES8 and an 8-byte one (pickling.bytes_at). */
    unsigned char head[FRAME_HEADER + 11];
    uint64_t word[3];
    memcpy(head, frame, sizeof head);
    memcpy(word, head, FRAME_HEADER);
    unsigned codec = (unsigned)(word[0] >> CODEC_SHIFT) & 0xFF;
    const unsigned char *ops = head + FRAME_HEADER;
    uint64_t start = 0, size = 0;
    if (ops[0] == 0x80 && ops[1] == 5 && ops[2] == 'B') {
        uint32_t short_size;
        memcpy(&short_size, ops + 3, 4);
        start = 7, size = short_size;
    }
    else if (ops[0] == 0x80 && ops[1] == 5 && ops[2] == 0x8E) {
        memcpy(&size, ops + 3, 8);
        start = 11;
    }
    uint64_t payload_length = word[1];
    if (start == 0 || (word[0] & ~(0xFFULL << CODEC_SHIFT)) != self->first_word
        || self->decoders[codec] != pickle_loads || word[2] >> 32
        || payload_length > length || payload_length + FRAME_HEADER != length
        || payload_length <= FULL_CHECK_LIMIT || size != payload_length - start - 1) {
        return slow(); /* not one bytes in an unsigned pickle frame (or damage) */
    }
    PyObject *body = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size);
    if (body == NULL) {
        return NULL;
    }
    unsigned char *copy = (unsigned char *)PyBytes_AS_STRING(body);
    memcpy(copy, frame + FRAME_HEADER + start, size);
    unsigned char stop = frame[length - 1];
    __atomic_thread_fence(__ATOMIC_ACQUIRE); /* the copies before the sequence is read again */
    if (load(seq_word) != seq || stop != '.') {
        Py_DECREF(body);
        return slow(); /* a writer reused the slot, or damage */
    }
    /* The payload's first and last CHECK_EDGE bytes: its opcodes then the value's start; the
     * value's end then STOP (payload_length > FULL_CHECK_LIMIT, so both lie inside). */
    uint32_t crc = checksum(checksum(0, head, 16), ops, start);
    crc = checksum(crc, copy, CHECK_EDGE - start);
    crc = checksum(crc, copy + size - (CHECK_EDGE - 1), CHECK_EDGE - 1);
    if (checksum(crc, &stop, 1) != (uint32_t)word[2]) {
        Py_DECREF(body);
        return slow();
    }
    return body;
}

/* The get of a large variable this handle maps (largefile.py's seqlock). */
static PyObject *
large_get(Hot *self, PyObject *index)
{
    PyObject *hot = mapped(self, index); /* held: an allocation below may drop the variable */
    if (hot == NULL) {
        return slow();
    }
    Py_ssize_t capacity = PyLong_AsSsize_t(PyTuple_GET_ITEM(hot, 1));
    /* No Python call with an exception pending: a bad capacity ends it here. */
    int trusted = capacity > 0 ? PyObject_IsTrue(PyTuple_GET_ITEM(hot, 2)) : -1;
    Py_buffer buffer;
    uint64_t *words = capacity > 0 && trusted >= 0
                          ? words_of(PyTuple_GET_ITEM(hot, 0), &buffer, VAR_HEADER + 2 * capacity)
                          : NULL;
    if (words == NULL) {
        Py_DECREF(hot);
        return slow();
    }
    uint64_t control = load(&words[W_CONTROL]);
    uint64_t high = control >> 32;
    uint64_t slot = high & 1;
    uint64_t seq = high * 2;
    uint64_t length = load(&words[W_LENGTH + slot]);
    PyObject *payload = NULL;
    if ((control & LOW) == check_of(high) && !(high & RETIRED) && load(&words[W_SEQ + slot]) == seq
        && length >= FRAME_HEADER && length <= (uint64_t)capacity) {
        if (length > SMALL) {
            const unsigned char *frame = (const unsigned char *)words + VAR_HEADER + slot * capacity;
            PyObject *value = split_get(self, frame, length, &words[W_SEQ + slot], seq);
            PyBuffer_Release(&buffer);
            Py_DECREF(hot);
            return value;
        }
        payload = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(length - FRAME_HEADER));
    }
    if (payload == NULL) {
        PyBuffer_Release(&buffer);
        Py_DECREF(hot);
        return PyErr_Occurred() ? NULL : slow();
    }
    const unsigned char *frame = (const unsigned char *)words + VAR_HEADER + slot * capacity;
    uint64_t head[3];
    memcpy(head, frame, FRAME_HEADER);
    memcpy(PyBytes_AS_STRING(payload), frame + FRAME_HEADER, length - FRAME_HEADER);
    /* The copies happen before the sequence word is read again (a seqlock's read side). */
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    uint64_t after = load(&words[W_SEQ + slot]);
    PyBuffer_Release(&buffer);
    Py_DECREF(hot);
    if (after != seq) {
        Py_DECREF(payload);
        return slow(); /* a writer reused the slot: Python copies again */
    }
    return decode_frame(self, head, payload, trusted);
}

PyDoc_STRVAR(hot_get_doc,
"get(index) -> the value, or SLOW\n\n"
"Find a variable in the index and read and decode its value without a lock: a slot's\n"
"(slabs.py) or, if the handle maps it, a large variable's file (largefile.py).");

static PyObject *
get_entered(Hot *self, PyObject *index)
{
    uint64_t *meta = meta_words(self), *words = self->index_words;
    if (self->closing || meta == NULL || words == NULL || self->epoch != fork_epoch) {
        return slow();
    }
    uint64_t key = PyLong_AsUnsignedLongLongMask(index);
    if (key == (uint64_t)-1 && PyErr_Occurred()) {
        return slow();
    }
    uint64_t gen = self->index_gen, word = 0;
    uint64_t loc = find(words, self->index_buffer.len, key, &word);
    if (load(&meta[M_STATE]) & STATE_DIRTY || load(&meta[M_RECOVERIES]) != self->recoveries
        || load(&meta[M_INDEX_GEN]) != gen || loc <= LOC_TOMB || loc == ~0ULL) {
        /* DIRTY (Python asks whether that writer is alive), recovered, another index, absent,
         * or damaged */
        return slow();
    }
    if (loc == LOC_LARGE) {
        return large_get(self, index);
    }
    return slab_get(self, meta, loc, key, gen);
}

static PyObject *
hot_get(Hot *self, PyObject *index)
{
    enter(self); /* what the call reads stays mapped until it leaves (maps.c) */
    PyObject *result = get_entered(self, index);
    leave(self);
    return result;
}

PyDoc_STRVAR(hot_index_doc,
"index(words, gen)\n\n"
"Say which index the handle maps now (a memoryview of its words) and its generation.");

static PyObject *
hot_index(Hot *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "index(words, gen)");
        return NULL;
    }
    uint64_t gen = PyLong_AsUnsignedLongLong(args[1]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (!self->closing) { /* closed: stays closed */
        set_index(self, args[0], gen);
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(hot_reset_doc,
"reset(lock, recoveries, dirty_tag)\n\n"
"Say which lock guards the segment (its LockInterface: acquire, release, words, settle; see\n"
"shmfs/locking.py), which RECOVERIES count the backend's mappings belong to, and the DIRTY\n"
"word its writes store; also after a fork, which this call acknowledges. Until the first\n"
"reset, every put is SLOW.");

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
    if (self->closing) {
        Py_RETURN_NONE; /* closed: a closed handle stays closed */
    }
    PyObject *lock = args[0];
    Py_buffer buffer;
    if (lock_interface_words(lock, &buffer) < 0) {
        return NULL;
    }
    if (self->closing) {
        PyBuffer_Release(&buffer);
        Py_RETURN_NONE; /* closed: a closed handle stays closed */
    }
    /* Swapped even inside a call (a finalizer's reset): no call keeps a pointer to the words
     * across Python code; each reads them afresh right after taking the thread lock. */
    if (self->lock_words != NULL) {
        PyBuffer_Release(&self->lock_buffer);
    }
    self->lock_buffer = buffer;
    self->lock_words = (int64_t *)buffer.buf;
    Py_XSETREF(self->lock, Py_NewRef(lock));
    Py_XSETREF(self->acquire, Py_NewRef(PyTuple_GET_ITEM(lock, 0)));
    Py_XSETREF(self->release, Py_NewRef(PyTuple_GET_ITEM(lock, 1)));
    Py_XSETREF(self->settle, Py_NewRef(PyTuple_GET_ITEM(lock, 3)));
    self->recoveries = recoveries;
    self->dirty_tag = dirty_tag;
    self->epoch = fork_epoch;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(hot_close_doc, "close()\n\nDrop every reference: from now on, every call is SLOW.");

/* What ties a Hot to its handle; its decoders stay until it is collected. maps.c calls it
 * once no call is running (a close from inside a call only marks the Hot closing). */
void
drop_handle(Hot *self)
{
    Py_CLEAR(self->vars);
    Py_CLEAR(self->slabs);
    Py_CLEAR(self->meta);
    if (self->lock_words != NULL) {
        PyBuffer_Release(&self->lock_buffer);
        self->lock_words = NULL;
    }
    Py_CLEAR(self->lock);
    Py_CLEAR(self->acquire);
    Py_CLEAR(self->release);
    Py_CLEAR(self->settle);
}

static PyObject *
hot_close(Hot *self, PyObject *Py_UNUSED(ignored))
{
    let_go(self);
    Py_RETURN_NONE;
}

static int
hot_init(Hot *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"vars", "slabs", "meta", "decoders", "first_word", NULL};
    PyObject *vars, *slabs, *meta, *decoders;
    unsigned long long first_word;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!O!OO!K", names, &PyDict_Type, &vars,
                                     &PyDict_Type, &slabs, &meta, &PyDict_Type, &decoders,
                                     &first_word)) {
        return -1;
    }
    if (first_word & (0xFFULL << CODEC_SHIFT)) {
        PyErr_SetString(PyExc_ValueError, "first_word must have its codec byte zero");
        return -1;
    }
    if (take_decoders(decoders, self->decoders, self->failures, self->executes) < 0) {
        return -1;
    }
    Py_XSETREF(self->vars, Py_NewRef(vars));
    Py_XSETREF(self->slabs, Py_NewRef(slabs));
    Py_XSETREF(self->meta, Py_NewRef(meta));
    self->first_word = first_word;
    self->epoch = fork_epoch;
    return 0;
}

static int
hot_traverse(Hot *self, visitproc visit, void *arg)
{
    Py_VISIT(self->vars);
    Py_VISIT(self->slabs);
    Py_VISIT(self->pending_index);
    Py_VISIT(self->meta);
    Py_VISIT(self->lock);
    Py_VISIT(self->acquire);
    Py_VISIT(self->release);
    Py_VISIT(self->settle);
    for (int i = 0; i < 256; i++) {
        Py_VISIT(self->decoders[i]);
        Py_VISIT(self->failures[i]);
    }
    return 0;
}

static int
hot_clear(Hot *self)
{
    let_go(self); /* unreachable: no call of its own is running */
    for (int i = 0; i < 256; i++) {
        Py_CLEAR(self->decoders[i]);
        Py_CLEAR(self->failures[i]);
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
    {"get_many", (PyCFunction)hot_get_many, METH_O, hot_get_many_doc},
    {"put", (PyCFunction)(void (*)(void))hot_put, METH_FASTCALL, hot_put_doc},
    {"reset", (PyCFunction)(void (*)(void))hot_reset, METH_FASTCALL, hot_reset_doc},
    {"index", (PyCFunction)(void (*)(void))hot_index, METH_FASTCALL, hot_index_doc},
    {"close", (PyCFunction)hot_close, METH_NOARGS, hot_close_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(hot_doc,
"Hot(vars, slabs, meta, decoders, first_word)\n\n"
"The C get and put of one tmpfs segment handle (see shmfs/hotpath.py).");

PyTypeObject HotType = {
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

