/* shmfs._hot: which values the fast put takes, and their pickles. */
#include "hot.h"

#include <string.h>

/* codecs.is_plain, check for check (builtin scalars in builtin containers of at most 64 items,
 * nested at most 4 deep), within a budget: each item costs one, and each str or bytes its length,
 * so that a value too big for the fast path is not pickled only to be pickled again. It runs
 * no Python code itself, but iterating a set allocates, which may start a collection whose
 * finalizers change the containers being checked: every item is held while it is checked. */
int
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
        if (PySequence_Fast_GET_SIZE(value) > 64) {
            return 0;
        }
        /* The size is read again each time and each item held while it is checked: a set's
         * iterator allocates, a collection it starts may run a finalizer that changes a list
         * being checked here. */
        for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(value); i++) {
            PyObject *item = Py_NewRef(PySequence_Fast_GET_ITEM(value, i));
            int result = plain(item, depth + 1, budget);
            Py_DECREF(item);
            if (!result) {
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
            Py_INCREF(key); /* held while checked, as list items are */
            Py_INCREF(item);
            int result = plain(key, depth + 1, budget) && plain(item, depth + 1, budget);
            Py_DECREF(key);
            Py_DECREF(item);
            if (!result) {
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


/* pickle.dumps(value, 5), byte for byte as _pickle writes it: a str of up to 32 KiB (its UTF-8)
 * or a bytes of under 256 is written here (PROTO 5; FRAME and its length; SHORT_BINUNICODE,
 * BINUNICODE or SHORT_BINBYTES and the length; the bytes; MEMOIZE; STOP), since making and
 * dropping a Pickler costs more than the rest of such a put in C. Anything else, a str with a
 * lone surrogate (pickle's own 'surrogatepass') among them, goes through pickle.dumps.
 * tests/test_hotpath.py and tests/test_sysv_hot.py hold the two equal. NULL with an exception
 * set. */
PyObject *
plain_dumps(PyObject *value)
{
    const char *data = NULL;
    Py_ssize_t n = -1, limit = 0;
    unsigned char op = 0;
    if (PyUnicode_CheckExact(value)) {
        if (PyUnicode_IS_ASCII(value)) {
            data = (const char *)PyUnicode_DATA(value);
            n = PyUnicode_GET_LENGTH(value);
        }
        else if ((data = PyUnicode_AsUTF8AndSize(value, &n)) == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
                return NULL;
            }
            PyErr_Clear();
            n = -1;
        }
        op = n < 256 ? 0x8C : 'X';
        limit = 32 * 1024; /* well inside pickle's 64 KiB frame */
    }
    else if (PyBytes_CheckExact(value)) {
        data = PyBytes_AS_STRING(value);
        n = PyBytes_GET_SIZE(value);
        op = 'C';
        limit = 255;
    }
    if (n < 0 || n > limit) {
        PyObject *dumps_args[2] = {value, protocol};
        return PyObject_Vectorcall(pickle_dumps, dumps_args, 2, NULL);
    }
    Py_ssize_t head = op == 'X' ? 5 : 2, framed = head + n + 2;
    PyObject *pickled = PyBytes_FromStringAndSize(NULL, 11 + framed);
    if (pickled == NULL) {
        return NULL;
    }
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(pickled);
    out[0] = 0x80;
    out[1] = 5;
    out[2] = 0x95;
    for (int i = 0; i < 8; i++) { /* FRAME: the opcodes after its 8 bytes, little-endian */
        out[3 + i] = (unsigned char)((uint64_t)framed >> (8 * i));
    }
    out[11] = op;
    for (Py_ssize_t i = 1; i < head; i++) {
        out[11 + i] = (unsigned char)((uint64_t)n >> (8 * (i - 1)));
    }
    memcpy(out + 11 + head, data, (size_t)n);
    out[11 + head + n] = 0x94;
    out[12 + head + n] = '.';
    return pickled;
}
