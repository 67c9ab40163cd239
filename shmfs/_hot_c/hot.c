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

/* (words, capacity, trusted, writable) of a mapped variable; borrowed, or NULL if absent. */
PyObject *
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

int
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

/* What ties a Hot to its handle; its decoders stay until it is collected. */
static void
drop_handle(Hot *self)
{
    Py_CLEAR(self->vars);
    Py_CLEAR(self->meta);
    Py_CLEAR(self->lock);
    Py_CLEAR(self->acquire);
    Py_CLEAR(self->release);
}

static PyObject *
hot_close(Hot *self, PyObject *Py_UNUSED(ignored))
{
    drop_handle(self);
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
    drop_handle(self);
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

