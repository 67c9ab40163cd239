/* shmfs._hot: which values the fast put takes. */
#include "hot.h"

/* codecs.is_plain, check for check (builtin scalars in builtin containers of at most 64 items,
 * nested at most 4 deep), within a budget: each item costs one, and each str or bytes its length,
 * so that a value too big for the fast path is not pickled only to be pickled again. Runs no
 * Python code, so nothing changes under it. */
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

