/* shmfs._hot: which values the fast put takes. */
#include "hot.h"

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

