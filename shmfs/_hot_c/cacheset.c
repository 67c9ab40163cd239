/* shmfs._hot.CacheSets: a Cache's set over its own entry, in one call (shmfs/cache/writes.py).
 *
 * Why it exists. Around its C calls (the key's slot, the put) a Cache set in Python is about
 * forty interpreter steps: the ttl, the head of the entry's pickle (pickling.tuple_head), the
 * clock, the entry, Segment.put_if_head and the LRU note; among 200,000 keys they cost more
 * than the C calls. Here they are one. It does the common case only, the set that
 * Writes._set_in_place does in one fast put (the variable holds this key's entry alone, or
 * nothing), and answers that way exactly: the key's slot, the clock, the entry (canonical key,
 * value, expires or None, stored at), the put compared on the head, then the LRU note. Any
 * other case (a ttl given, an odd clock or ttl, a put the fast path declines) it hands to the
 * Python set having stored nothing: that set does the whole set as it always has. */
#include "hot.h"

#include <string.h>

/* pickling.TUPLE_HEAD_AT: where the head lies in a protocol-5 pickle (PROTO, FRAME, length). */
#define TUPLE_HEAD_AT 11
/* Protocol-5 opcodes (Lib/pickle.py): MARK, SHORT_BINUNICODE, BINUNICODE, MEMOIZE. */
#define OP_MARK '('
#define OP_SHORT_BINUNICODE 0x8c
#define OP_BINUNICODE 'X'
#define OP_MEMOIZE 0x94
/* Heads of longer strs go the Python way: pickle writes a str of 64 KiB or more outside the
 * frame, and such an entry is past the fast put's limit anyway. */
#define HEAD_TEXT_MAX (SMALL - 1024)

typedef struct {
    PyObject_HEAD
    PyObject *slots;    /* a KeySlots: key -> (text, index) */
    PyObject *put;      /* the segment's fast put (Segment.fast_put): index, codec, value,
                         * head_at, head, or_absent -> None, or SLOW having changed nothing */
    PyObject *codec;    /* the codec id it takes */
    PyObject *cache;    /* the Cache: its ``ttl`` is looked up on every call, as Python does */
    PyObject *entry;    /* shmfs.cache.entry: its ``clock``, looked up on every call */
    PyObject *recency;  /* its ``due`` and ``flush``: the LRU notes' merge */
    PyObject *pending;  /* LRU slot -> latest use, not yet shared */
    PyObject *slow_set; /* Cache.set in Python: (key, value, ttl=None) -> None */
    uint64_t mask;      /* the LRU slots' mask */
} CacheSets;

static PyObject *str_clock;
static PyObject *str_due;
static PyObject *str_flush;
static PyObject *str_ttl;
static PyObject *head_at;
static PyObject *or_absent;

/* The bytes pickling.tuple_head(text) answers, or NULL: SLOW for a text it leaves to Python
 * (lone surrogates, which pickle writes with surrogatepass; too long), with no exception set;
 * NULL with one set for a failed allocation (``*failed`` says which). */
static PyObject *
head_of(PyObject *text, int *failed)
{
    *failed = 0;
    Py_ssize_t length;
    const char *utf8 = PyUnicode_AsUTF8AndSize(text, &length);
    if (utf8 == NULL) {
        PyErr_Clear(); /* lone surrogates: Python pickles them its way */
        return NULL;
    }
    if (length > HEAD_TEXT_MAX) {
        return NULL;
    }
    Py_ssize_t prefix = length <= 0xff ? 2 : 5;
    PyObject *head = PyBytes_FromStringAndSize(NULL, 1 + prefix + length + 1);
    if (head == NULL) {
        *failed = 1;
        return NULL;
    }
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(head);
    *out++ = OP_MARK;
    if (length <= 0xff) {
        *out++ = OP_SHORT_BINUNICODE;
        *out++ = (unsigned char)length;
    }
    else {
        uint32_t little = (uint32_t)length; /* the format is little-endian, as this machine */
        *out++ = OP_BINUNICODE;
        memcpy(out, &little, 4);
        out += 4;
    }
    memcpy(out, utf8, (size_t)length);
    out[length] = OP_MEMOIZE;
    return head;
}

const char tuple_head_doc[] =
"tuple_head(text, /) -> bytes, or None\n\n"
"pickling.tuple_head(text) made in C, as CacheSets makes it; None for a str left to Python.";

PyObject *
hot_tuple_head(PyObject *module, PyObject *text)
{
    (void)module;
    if (!PyUnicode_CheckExact(text)) {
        PyErr_SetString(PyExc_TypeError, "tuple_head: a str");
        return NULL;
    }
    int failed;
    PyObject *head = head_of(text, &failed);
    return head != NULL || failed ? head : Py_NewRef(Py_None);
}

static int
cachesets_init(CacheSets *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"slots", "put", "codec", "cache", "entry", "recency", "pending", "mask",
                            "slow_set", NULL};
    PyObject *slots, *put, *codec, *cache, *entry, *recency, *pending, *slow_set;
    unsigned long long mask;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!OO!OOOO!KO:CacheSets", names, &KeySlotsType,
                                     &slots, &put, &PyLong_Type, &codec, &cache, &entry, &recency,
                                     &PyDict_Type, &pending, &mask, &slow_set)) {
        return -1;
    }
    if ((str_clock == NULL && (str_clock = PyUnicode_InternFromString("clock")) == NULL)
        || (str_due == NULL && (str_due = PyUnicode_InternFromString("due")) == NULL)
        || (str_flush == NULL && (str_flush = PyUnicode_InternFromString("flush")) == NULL)
        || (str_ttl == NULL && (str_ttl = PyUnicode_InternFromString("ttl")) == NULL)
        || (head_at == NULL && (head_at = PyLong_FromLong(TUPLE_HEAD_AT)) == NULL)) {
        return -1;
    }
    or_absent = Py_True;
    Py_XSETREF(self->slots, Py_NewRef(slots));
    Py_XSETREF(self->put, Py_NewRef(put));
    Py_XSETREF(self->codec, Py_NewRef(codec));
    Py_XSETREF(self->cache, Py_NewRef(cache));
    Py_XSETREF(self->entry, Py_NewRef(entry));
    Py_XSETREF(self->recency, Py_NewRef(recency));
    Py_XSETREF(self->pending, Py_NewRef(pending));
    Py_XSETREF(self->slow_set, Py_NewRef(slow_set));
    self->mask = mask;
    return 0;
}

static int
cachesets_traverse(CacheSets *self, visitproc visit, void *arg)
{
    Py_VISIT(self->slots);
    Py_VISIT(self->put);
    Py_VISIT(self->codec);
    Py_VISIT(self->cache);
    Py_VISIT(self->entry);
    Py_VISIT(self->recency);
    Py_VISIT(self->pending);
    Py_VISIT(self->slow_set);
    return 0;
}

static int
cachesets_clear(CacheSets *self)
{
    Py_CLEAR(self->slots);
    Py_CLEAR(self->put);
    Py_CLEAR(self->codec);
    Py_CLEAR(self->cache);
    Py_CLEAR(self->entry);
    Py_CLEAR(self->recency);
    Py_CLEAR(self->pending);
    Py_CLEAR(self->slow_set);
    return 0;
}

static void
cachesets_dealloc(CacheSets *self)
{
    PyObject_GC_UnTrack(self);
    (void)cachesets_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* What one call uses of a CacheSets, held by references of its own: the calls it makes can run
 * Python code (a clock, a ttl property, a collection's finalizers), which could re-initialise
 * it and drop what its fields held. */
typedef struct {
    PyObject *slots, *put, *codec, *cache, *entry, *recency, *pending;
    uint64_t mask;
} Held;

static void
hold(CacheSets *self, Held *held)
{
    held->slots = Py_NewRef(self->slots);
    held->put = Py_NewRef(self->put);
    held->codec = Py_NewRef(self->codec);
    held->cache = Py_NewRef(self->cache);
    held->entry = Py_NewRef(self->entry);
    held->recency = Py_NewRef(self->recency);
    held->pending = Py_NewRef(self->pending);
    held->mask = self->mask;
}

static void
let_go_of(Held *held)
{
    Py_DECREF(held->slots);
    Py_DECREF(held->put);
    Py_DECREF(held->codec);
    Py_DECREF(held->cache);
    Py_DECREF(held->entry);
    Py_DECREF(held->recency);
    Py_DECREF(held->pending);
}

/* The LRU note of a stored entry, as Writes.used makes it: pending[index & mask] = now, and
 * the notes merged when due. None, or NULL with an exception set (the entry stays stored, as
 * it does when the Python note fails). */
static PyObject *
note_use(Held *held, uint64_t index, PyObject *now)
{
    PyObject *slot = PyLong_FromUnsignedLongLong(index & held->mask);
    if (slot == NULL) {
        return NULL;
    }
    int failed = PyDict_SetItem(held->pending, slot, now);
    Py_DECREF(slot);
    if (failed) {
        return NULL;
    }
    PyObject *result = NULL;
    PyObject *due = PyObject_GetAttr(held->recency, str_due);
    if (due != NULL) {
        int merge = PyObject_RichCompareBool(now, due, Py_GT);
        Py_DECREF(due);
        if (merge == 0) {
            result = Py_NewRef(Py_None);
        }
        else if (merge == 1) {
            result = PyObject_CallMethodOneArg(held->recency, str_flush, now);
            if (result != NULL) {
                Py_SETREF(result, Py_NewRef(Py_None));
            }
        }
    }
    return result;
}

/* The entry for ``text`` at ``now`` living ``life`` seconds (None: for ever); NULL with an
 * exception set. */
static PyObject *
entry_of(PyObject *text, PyObject *value, PyObject *now, PyObject *life)
{
    PyObject *expires;
    if (life == Py_None) {
        expires = Py_NewRef(Py_None);
    }
    else {
        expires = PyFloat_FromDouble(PyFloat_AS_DOUBLE(now) + PyFloat_AS_DOUBLE(life));
        if (expires == NULL) {
            return NULL;
        }
    }
    PyObject *entry = PyTuple_New(4);
    if (entry == NULL) {
        Py_DECREF(expires);
        return NULL;
    }
    PyTuple_SET_ITEM(entry, 0, Py_NewRef(text));
    PyTuple_SET_ITEM(entry, 1, Py_NewRef(value));
    PyTuple_SET_ITEM(entry, 2, expires);
    PyTuple_SET_ITEM(entry, 3, Py_NewRef(now));
    return entry;
}

/* The set of ``key`` to ``value`` with the cache's ttl: None once stored, SLOW having stored
 * nothing, or NULL with an exception set. Every object it uses across a call that can run
 * Python is held by a reference of its own. */
static PyObject *
cachesets_store(CacheSets *self, PyObject *key, PyObject *value)
{
    if (self->slots == NULL) {
        PyErr_SetString(PyExc_ValueError, "CacheSets: not initialised");
        return NULL;
    }
    Held held;
    hold(self, &held);
    PyObject *result = NULL, *life = NULL, *now = NULL, *head = NULL, *entry = NULL;
    PyObject *slot = keyslots_slot_of(held.slots, key);
    if (slot == NULL) {
        goto done;
    }
    if (!PyTuple_CheckExact(slot) || PyTuple_GET_SIZE(slot) != 2
        || !PyUnicode_CheckExact(PyTuple_GET_ITEM(slot, 0))
        || !PyLong_CheckExact(PyTuple_GET_ITEM(slot, 1))) {
        result = slow(); /* a fallback that answers oddly: Python says what is wrong */
        goto done;
    }
    PyObject *text = PyTuple_GET_ITEM(slot, 0), *index_object = PyTuple_GET_ITEM(slot, 1);
    uint64_t index = PyLong_AsUnsignedLongLong(index_object);
    if (index == (uint64_t)-1 && PyErr_Occurred()) {
        PyErr_Clear(); /* not an index C can note: Python's set has it */
        result = slow();
        goto done;
    }
    life = PyObject_GetAttr(held.cache, str_ttl);
    if (life == NULL) {
        goto done;
    }
    if (life != Py_None && !PyFloat_CheckExact(life)) {
        result = slow(); /* check_ttl makes a float or None; anything else Python judges */
        goto done;
    }
    int failed;
    head = head_of(text, &failed);
    if (head == NULL) {
        result = failed ? NULL : slow();
        goto done;
    }
    PyObject *clock = module_attribute(held.entry, str_clock);
    if (clock == NULL) {
        goto done;
    }
    now = PyObject_CallNoArgs(clock); /* may run Python: every object here is held */
    Py_DECREF(clock);
    if (now == NULL) {
        goto done;
    }
    if (!PyFloat_CheckExact(now)) {
        result = slow(); /* a clock of another kind: Python does the arithmetic */
        goto done;
    }
    entry = entry_of(text, value, now, life);
    if (entry == NULL) {
        goto done;
    }
    PyObject *put_args[6] = {index_object, held.codec, entry, head_at, head, or_absent};
    PyObject *stored = PyObject_Vectorcall(held.put, put_args, 6, NULL);
    if (stored == NULL) {
        goto done;
    }
    if (stored != Py_None) {
        Py_DECREF(stored);
        result = slow(); /* SLOW: nothing stored; the Python set takes it from the start */
        goto done;
    }
    Py_DECREF(stored);
    result = note_use(&held, index, now);
done:
    Py_XDECREF(entry);
    Py_XDECREF(now);
    Py_XDECREF(head);
    Py_XDECREF(life);
    Py_XDECREF(slot);
    let_go_of(&held);
    return result;
}

/* Cache.set itself, for the handle to bind as its ``set``: the common case here, anything
 * else by the Python set (which starts afresh: SLOW stored nothing). */
static PyObject *
cachesets_set(CacheSets *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (self->slow_set == NULL) {
        PyErr_SetString(PyExc_ValueError, "CacheSets: not initialised");
        return NULL;
    }
    if (kwnames != NULL || nargs < 2 || nargs > 3 || (nargs == 3 && args[2] != Py_None)) {
        /* a ttl, keywords, or a wrong count: the Python set takes them, or says what is wrong */
        PyObject *slow_set = Py_NewRef(self->slow_set);
        PyObject *result = PyObject_Vectorcall(slow_set, args, (size_t)nargs, kwnames);
        Py_DECREF(slow_set);
        return result;
    }
    /* Held: the call may run code that drops the caller's references. */
    PyObject *key = Py_NewRef(args[0]), *value = Py_NewRef(args[1]);
    PyObject *result = cachesets_store(self, key, value);
    Py_DECREF(key);
    Py_DECREF(value);
    if (result != SLOW) {
        return result;
    }
    Py_DECREF(result);
    PyObject *slow_set = Py_NewRef(self->slow_set);
    result = PyObject_Vectorcall(slow_set, args, (size_t)nargs, NULL);
    Py_DECREF(slow_set);
    return result;
}

static PyObject *
cachesets_store_method(CacheSets *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "store(key, value)");
        return NULL;
    }
    PyObject *key = Py_NewRef(args[0]), *value = Py_NewRef(args[1]);
    PyObject *result = cachesets_store(self, key, value);
    Py_DECREF(key);
    Py_DECREF(value);
    return result;
}

static PyMethodDef cachesets_methods[] = {
    {"store", (PyCFunction)(void (*)(void))cachesets_store_method, METH_FASTCALL,
     "store(key, value, /)\n--\n\nThe common set in C: None once stored, SLOW having stored nothing."},
    {"set", (PyCFunction)(void (*)(void))cachesets_set, METH_FASTCALL | METH_KEYWORDS,
     "set(key, value, ttl=None)\n--\n\nshmfs.Cache.set: the common case in C, anything else in Python."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject CacheSetsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmfs._hot.CacheSets",
    .tp_basicsize = sizeof(CacheSets),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = PyDoc_STR("CacheSets(slots, put, codec, cache, entry, recency, pending, mask, slow_set)\n--\n\n"
                        "A Cache's set over its own entry in one call (see cacheset.c)."),
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)cachesets_init,
    .tp_dealloc = (destructor)cachesets_dealloc,
    .tp_traverse = (traverseproc)cachesets_traverse,
    .tp_clear = (inquiry)cachesets_clear,
    .tp_methods = cachesets_methods,
};
