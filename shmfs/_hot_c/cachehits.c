/* shmfs._hot.CacheHits: a Cache's get of a live entry, in one call (shmfs/cache/__init__.py).
 *
 * Why it exists. Around its two C calls (the key's slot, the variable's read) a Cache hit in
 * Python is about twenty interpreter steps: the entry's checks, the clock, the hit count and
 * the LRU note, about as much as both calls together. Here they are one. It does only the
 * common case, a live entry of the key alone in its variable, with no merge of the LRU notes
 * due, and answers SLOW for everything else, having changed nothing: the Python get then does
 * the whole get as it always has. What it does is exactly what that get does on a hit, in the
 * same order; an entry is (canonical key, value, expires or None, stored at), as
 * shmfs/cache/entry.py writes it. */
#include "hot.h"

typedef struct {
    PyObject_HEAD
    PyObject *slots;    /* a KeySlots: key -> (text, index) */
    PyObject *read;     /* the segment's get_fast: index -> value, or SLOW */
    PyObject *entry;    /* shmfs.cache.entry: its ``clock`` is looked up on every call, as
                         * Python looks it up (tests replace it) */
    PyObject *recency;  /* its ``due``: when the LRU notes are to be merged (Python does it) */
    PyObject *counts;   /* [hits, misses, evictions] not yet shared */
    PyObject *pending;  /* LRU slot -> latest use, not yet shared */
    PyObject *slow_get; /* Cache.get in Python: (key, default) -> value, for all but hits */
    uint64_t mask;      /* the LRU slots' mask */
} CacheHits;

static PyObject *str_clock;
static PyObject *str_due;
static PyObject *one;

static int
cachehits_init(CacheHits *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"slots", "read", "entry", "recency", "counts", "pending", "mask", "slow_get", NULL};
    PyObject *slots, *read, *entry, *recency, *counts, *pending, *slow_get;
    unsigned long long mask;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!OOOO!O!KO:CacheHits", names, &KeySlotsType, &slots,
                                     &read, &entry, &recency, &PyList_Type, &counts, &PyDict_Type,
                                     &pending, &mask, &slow_get)) {
        return -1;
    }
    if (str_clock == NULL && (str_clock = PyUnicode_InternFromString("clock")) == NULL) {
        return -1;
    }
    if (str_due == NULL && (str_due = PyUnicode_InternFromString("due")) == NULL) {
        return -1;
    }
    if (one == NULL && (one = PyLong_FromLong(1)) == NULL) {
        return -1;
    }
    Py_XSETREF(self->slots, Py_NewRef(slots));
    Py_XSETREF(self->read, Py_NewRef(read));
    Py_XSETREF(self->entry, Py_NewRef(entry));
    Py_XSETREF(self->recency, Py_NewRef(recency));
    Py_XSETREF(self->counts, Py_NewRef(counts));
    Py_XSETREF(self->pending, Py_NewRef(pending));
    Py_XSETREF(self->slow_get, Py_NewRef(slow_get));
    self->mask = mask;
    return 0;
}

static int
cachehits_traverse(CacheHits *self, visitproc visit, void *arg)
{
    Py_VISIT(self->slots);
    Py_VISIT(self->read);
    Py_VISIT(self->entry);
    Py_VISIT(self->recency);
    Py_VISIT(self->counts);
    Py_VISIT(self->pending);
    Py_VISIT(self->slow_get);
    return 0;
}

static int
cachehits_clear(CacheHits *self)
{
    Py_CLEAR(self->slots);
    Py_CLEAR(self->read);
    Py_CLEAR(self->entry);
    Py_CLEAR(self->recency);
    Py_CLEAR(self->counts);
    Py_CLEAR(self->pending);
    Py_CLEAR(self->slow_get);
    return 0;
}

static void
cachehits_dealloc(CacheHits *self)
{
    PyObject_GC_UnTrack(self);
    (void)cachehits_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The clock's reading as a double; -2 for a reading that is not a float or an int a double
 * holds (SLOW: Python compares whatever it is). */
static int
reading(PyObject *now, double *seconds)
{
    if (PyFloat_CheckExact(now)) {
        *seconds = PyFloat_AS_DOUBLE(now);
        return 0;
    }
    if (PyLong_CheckExact(now)) {
        *seconds = PyLong_AsDouble(now);
        if (*seconds == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();  /* too big for a double: Python compares it exactly */
            return -2;
        }
        return 0;
    }
    return -2;
}

/* Whether ``entry`` (a 4-tuple whose first item is ``text``) is live at ``now``: 1 live, 0
 * not (or not of a kind this code judges), -1 with an exception set. live() in entry.py. */
static int
is_live(PyObject *entry, PyObject *text, double now)
{
    PyObject *key = PyTuple_GET_ITEM(entry, 0);
    if (!PyUnicode_CheckExact(key)) {
        return 0;
    }
    if (key != text) {
        int same = PyUnicode_Compare(key, text);  /* exact strs: no Python code runs */
        if (same == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (same != 0) {
            return 0;
        }
    }
    PyObject *expires = PyTuple_GET_ITEM(entry, 2);
    PyObject *stored = PyTuple_GET_ITEM(entry, 3);
    if (!PyFloat_CheckExact(stored) || (expires != Py_None && !PyFloat_CheckExact(expires))) {
        return 0;
    }
    return (expires == Py_None || now < PyFloat_AS_DOUBLE(expires)) && PyFloat_AS_DOUBLE(stored) <= now;
}

/* The hit's bookkeeping, as the Python get does it: counts[0] += 1, pending[index & mask] = now.
 * 0, or -1 with an exception set (then nothing was changed, or only the count). */
static int
note_hit(CacheHits *self, uint64_t index, PyObject *now)
{
    if (PyList_GET_SIZE(self->counts) < 1 || !PyLong_CheckExact(PyList_GET_ITEM(self->counts, 0))) {
        PyErr_SetString(PyExc_TypeError, "CacheHits: the hit count is not an int");
        return -1;
    }
    PyObject *hits = PyNumber_Add(PyList_GET_ITEM(self->counts, 0), one);
    if (hits == NULL) {
        return -1;
    }
    PyList_SetItem(self->counts, 0, hits);  /* steals hits; the old int is an int: no finalizer */
    PyObject *slot = PyLong_FromUnsignedLongLong(index & self->mask);
    if (slot == NULL) {
        return -1;
    }
    int failed = PyDict_SetItem(self->pending, slot, now);
    Py_DECREF(slot);
    return failed;
}

/* The value of a live entry, SLOW, or NULL with an exception set; ``now`` and ``text`` are the
 * caller's references, ``stored`` the read's answer. */
static PyObject *
judge(CacheHits *self, PyObject *stored, PyObject *text, uint64_t index)
{
    if (!PyTuple_CheckExact(stored) || PyTuple_GET_SIZE(stored) != 4) {
        return slow();
    }
    PyObject *clock = module_attribute(self->entry, str_clock);
    if (clock == NULL) {
        return NULL;
    }
    PyObject *now = PyObject_CallNoArgs(clock);  /* may run Python: every object here is held */
    Py_DECREF(clock);
    if (now == NULL) {
        return NULL;
    }
    PyObject *result = NULL;
    double seconds;
    int read = reading(now, &seconds);
    int live = read == 0 ? is_live(stored, text, seconds) : read;
    if (live == -1) {
        goto done;
    }
    if (live != 1) {
        result = slow();
        goto done;
    }
    PyObject *due = PyObject_GetAttr(self->recency, str_due);
    if (due == NULL) {
        goto done;
    }
    int merge = PyFloat_CheckExact(due) ? seconds > PyFloat_AS_DOUBLE(due) : 1;  /* odd: Python's */
    Py_DECREF(due);
    if (merge) {
        result = slow();
        goto done;
    }
    if (note_hit(self, index, now) == 0) {
        result = Py_NewRef(PyTuple_GET_ITEM(stored, 1));
    }
done:
    Py_DECREF(now);
    return result;
}

static PyObject *
cachehits_hit(CacheHits *self, PyObject *key)
{
    if (self->slots == NULL) {
        PyErr_SetString(PyExc_ValueError, "CacheHits: not initialised");
        return NULL;
    }
    PyObject *slot = keyslots_slot_of(self->slots, key);
    if (slot == NULL) {
        return NULL;
    }
    PyObject *result = NULL;
    uint64_t index;
    if (!PyTuple_CheckExact(slot) || PyTuple_GET_SIZE(slot) != 2 || !PyLong_CheckExact(PyTuple_GET_ITEM(slot, 1))) {
        result = slow();  /* a fallback that answers oddly: Python says what is wrong */
        goto done;
    }
    index = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(slot, 1));
    if (index == (uint64_t)-1 && PyErr_Occurred()) {
        PyErr_Clear();  /* not an index C can note: Python's get has it */
        result = slow();
        goto done;
    }
    PyObject *stored = PyObject_CallOneArg(self->read, PyTuple_GET_ITEM(slot, 1));
    if (stored == NULL) {
        goto done;
    }
    result = stored == SLOW ? slow() : judge(self, stored, PyTuple_GET_ITEM(slot, 0), index);
    Py_DECREF(stored);
done:
    Py_DECREF(slot);
    return result;
}

/* Cache.get itself, for the handle to bind as its ``get``: a hit here, anything else by the
 * Python get (which reads again: SLOW changed nothing). */
static PyObject *
cachehits_get(CacheHits *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (self->slow_get == NULL) {
        PyErr_SetString(PyExc_ValueError, "CacheHits: not initialised");
        return NULL;
    }
    if (kwnames != NULL || nargs < 1 || nargs > 2) {
        /* keywords, or a wrong count: the Python get takes them, or says what is wrong */
        return PyObject_Vectorcall(self->slow_get, args, (size_t)nargs, kwnames);
    }
    PyObject *value = cachehits_hit(self, args[0]);
    if (value != SLOW) {
        return value;
    }
    Py_DECREF(value);
    return PyObject_Vectorcall(self->slow_get, args, (size_t)nargs, NULL);
}

static PyMethodDef cachehits_methods[] = {
    {"hit", (PyCFunction)cachehits_hit, METH_O,
     "hit(key, /)\n--\n\nThe value of key's live entry, noted as a hit; SLOW for anything else."},
    {"get", (PyCFunction)(void (*)(void))cachehits_get, METH_FASTCALL | METH_KEYWORDS,
     "get(key, default=None)\n--\n\nshmfs.Cache.get: a hit in C, anything else in Python."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject CacheHitsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmfs._hot.CacheHits",
    .tp_basicsize = sizeof(CacheHits),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = PyDoc_STR("CacheHits(slots, read, entry, recency, counts, pending, mask, slow_get)\n--\n\n"
                        "A Cache's get of a live entry in one call (see cachehits.c)."),
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)cachehits_init,
    .tp_dealloc = (destructor)cachehits_dealloc,
    .tp_traverse = (traverseproc)cachehits_traverse,
    .tp_clear = (inquiry)cachehits_clear,
    .tp_methods = cachehits_methods,
};
