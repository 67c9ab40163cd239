/* shmfs._hot.Mapping: a shared mapping of a file that keeps no descriptor. */
#include "hot.h"

#include <string.h>
#include <sys/mman.h>

/*
 * Before Python 3.13, every mmap.mmap holds a dup of its file's descriptor, so a handle could
 * keep only a sixteenth of RLIMIT_NOFILE mapped (256 under the common 1024). A mapping needs no
 * descriptor once made; this is the part of mmap.mmap that largefile.py uses (slices copied out
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

/* The slice is converted first (its __index__ may run code that closes the mapping), then the
 * mapping checked open; while the bytes are copied it counts as exported, so that code an
 * allocation runs (a collection's finalizers) cannot unmap it under the copy. */
static PyObject *
mapping_subscript(Mapping *self, PyObject *item)
{
    Py_ssize_t start, length;
    if (mapping_range(self, item, &start, &length) < 0 || mapping_open(self) < 0) {
        return NULL;
    }
    self->exports++;
    PyObject *copy = PyBytes_FromStringAndSize(self->data + start, length);
    self->exports--;
    return copy;
}

static int
mapping_ass_subscript(Mapping *self, PyObject *item, PyObject *value)
{
    Py_ssize_t start, length;
    if (mapping_range(self, item, &start, &length) < 0) {
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
    if (mapping_open(self) < 0) { /* checked last: the conversions above may run code */
        PyBuffer_Release(&source);
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

PyTypeObject MappingType = {
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

