/* shmfs._hot.key_slot: a Cache key's canonical str and variable index (shmfs/cache/keys.py).
 *
 * Why it exists. A Cache remembers the slots of recent keys, but past that memo a get pays the
 * canonical str and a 64-bit BLAKE2b in Python: five calls into hashlib and an int conversion,
 * about as much as the rest of the get. Here it is one call. The Python twin is keys.py's
 * canonical() and key_index(), whose hashlib.blake2b(digest_size=8) this BLAKE2b must equal bit
 * for bit (tests/test_hotpath.py checks it over many lengths and keys): both kinds of process
 * find the same entry at the same index.
 *
 * BLAKE2b as RFC 7693 defines it (https://www.rfc-editor.org/rfc/rfc7693), unkeyed, with an
 * eight-byte digest: the parameter block differs from the default only in its digest length. */
#include "hot.h"

#include <string.h>

/* keys.py: entries live at FIRST_ENTRY .. 2**63 - 1. */
#define FIRST_ENTRY 16ULL
#define SPAN ((1ULL << 63) - FIRST_ENTRY)
/* keys.py's SlotMemo.REST: a memo that did not pay rests for this many times its size. */
#define REST 4

static const uint64_t blake2b_iv[8] = {
    0x6A09E667F3BCC908ULL, 0xBB67AE8584CAA73BULL, 0x3C6EF372FE94F82BULL, 0xA54FF53A5F1D36F1ULL,
    0x510E527FADE682D1ULL, 0x9B05688C2B3E6C1FULL, 0x1F83D9ABFB41BD6BULL, 0x5BE0CD19137E2179ULL,
};

static const uint8_t sigma[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
};

static inline uint64_t
rotr(uint64_t word, int bits)
{
    return (word >> bits) | (word << (64 - bits));
}

#define MIX(a, b, c, d, x, y)          \
    do {                               \
        v[a] = v[a] + v[b] + (x);      \
        v[d] = rotr(v[d] ^ v[a], 32);  \
        v[c] = v[c] + v[d];            \
        v[b] = rotr(v[b] ^ v[c], 24);  \
        v[a] = v[a] + v[b] + (y);      \
        v[d] = rotr(v[d] ^ v[a], 16);  \
        v[c] = v[c] + v[d];            \
        v[b] = rotr(v[b] ^ v[c], 63);  \
    } while (0)

/* One 128-byte block into the state; ``bytes``: the message bytes so far, this block's too. */
static void
compress(uint64_t h[8], const unsigned char block[128], uint64_t bytes, int last)
{
    uint64_t m[16];
    uint64_t v[16];
    memcpy(m, block, sizeof m);  /* little-endian words, as the format says (hot.h checks) */
    for (int i = 0; i < 8; i++) {
        v[i] = h[i];
        v[i + 8] = blake2b_iv[i];
    }
    v[12] ^= bytes;  /* the counter's high word stays 0: keys are far below 2**64 bytes */
    if (last) {
        v[14] = ~v[14];
    }
    for (int round = 0; round < 12; round++) {
        const uint8_t *s = sigma[round];
        MIX(0, 4, 8, 12, m[s[0]], m[s[1]]);
        MIX(1, 5, 9, 13, m[s[2]], m[s[3]]);
        MIX(2, 6, 10, 14, m[s[4]], m[s[5]]);
        MIX(3, 7, 11, 15, m[s[6]], m[s[7]]);
        MIX(0, 5, 10, 15, m[s[8]], m[s[9]]);
        MIX(1, 6, 11, 12, m[s[10]], m[s[11]]);
        MIX(2, 7, 8, 13, m[s[12]], m[s[13]]);
        MIX(3, 4, 9, 14, m[s[14]], m[s[15]]);
    }
    for (int i = 0; i < 8; i++) {
        h[i] ^= v[i] ^ v[i + 8];
    }
}

/* The first eight bytes of BLAKE2b-64(bytes), read as a big-endian number (keys.py reads the
 * digest with int.from_bytes(..., "big")). */
static uint64_t
blake2b_64(const unsigned char *bytes, size_t length)
{
    uint64_t h[8];
    memcpy(h, blake2b_iv, sizeof h);
    h[0] ^= 0x01010000ULL | 8;  /* fanout 1, depth 1, no key, an eight-byte digest */
    size_t done = 0;
    while (length - done > 128) {  /* the last block, full or not, is compressed as the last */
        compress(h, bytes + done, done + 128, 0);
        done += 128;
    }
    unsigned char block[128] = {0};
    memcpy(block, bytes + done, length - done);
    compress(h, block, length, 1);
    return __builtin_bswap64(h[0]);
}

/* The canonical forms' tags (keys.py), made once. */
static PyObject *tag_str, *tag_int, *tag_bytes;

int
keyhash_init(void)
{
    tag_str = PyUnicode_InternFromString("s");
    tag_int = PyUnicode_InternFromString("i");
    tag_bytes = PyUnicode_InternFromString("b");
    return tag_str != NULL && tag_int != NULL && tag_bytes != NULL ? 0 : -1;
}

/* ``tag`` + ``body``, taking the reference to ``body`` (which may be NULL: an error is set). */
static PyObject *
tagged(PyObject *tag, PyObject *body)
{
    if (body == NULL) {
        return NULL;
    }
    PyObject *text = PyUnicode_Concat(tag, body);
    Py_DECREF(body);
    return text;
}

const char key_slot_doc[] =
    "key_slot(key, /)\n--\n\n"
    "(canonical str, variable index) of a Cache key of exact type str, bytes or int, as\n"
    "shmfs.cache.keys.canonical and key_index compute them; None for any other key, and for a\n"
    "str that UTF-8 cannot encode without surrogatepass (the Python twin does those).";

PyObject *
hot_key_slot(PyObject *module, PyObject *key)
{
    (void)module;
    PyObject *text;
    if (PyUnicode_CheckExact(key)) {
        text = PyUnicode_Concat(tag_str, key);
    }
    else if (PyLong_CheckExact(key)) {
        text = tagged(tag_int, PyObject_Str(key));  /* past the digit limit it raises, as Python */
    }
    else if (PyBytes_CheckExact(key)) {
        text = tagged(tag_bytes, PyUnicode_DecodeLatin1(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key), NULL));
    }
    else {
        Py_RETURN_NONE;
    }
    if (text == NULL) {
        return NULL;
    }
    Py_ssize_t length;
    const char *utf8 = PyUnicode_AsUTF8AndSize(text, &length);
    if (utf8 == NULL) {
        Py_DECREF(text);
        if (PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
            PyErr_Clear();  /* a lone surrogate: keys.py encodes it with surrogatepass */
            Py_RETURN_NONE;
        }
        return NULL;
    }
    uint64_t index = blake2b_64((const unsigned char *)utf8, (size_t)length) % SPAN + FIRST_ENTRY;
    PyObject *number = PyLong_FromUnsignedLongLong(index);
    if (number == NULL) {
        Py_DECREF(text);
        return NULL;
    }
    PyObject *slot = PyTuple_Pack(2, text, number);
    Py_DECREF(text);
    Py_DECREF(number);
    return slot;
}

/* KeySlots: a Cache handle's memo of recent keys' slots, with key_slot behind it: the twin of
 * keys.py's SlotMemo, whose docstring gives the rules (when the memo starts afresh, when it
 * stops taking keys). Only exact str, bytes and int keys are remembered: True == 1, yet True
 * is refused as a key (keys.py), so it must never be found here. The memo's keys are of those types alone, so
 * no lookup, store or clear here runs Python code. */
typedef struct {
    PyObject_HEAD
    PyObject *memo;      /* key -> (text, index) */
    PyObject *fallback;  /* key -> (text, index) in Python: keys.py's slot() */
    Py_ssize_t limit;
    Py_ssize_t hits;     /* since the memo was last emptied */
    Py_ssize_t misses;
    Py_ssize_t resting;  /* misses still to go without storing (the memo did not pay) */
} KeySlots;

/* A miss's key to be stored? Empties the memo when its turn comes (SlotMemo._admit). */
static int
admit(KeySlots *self)
{
    if (self->resting > 0) {
        if (--self->resting > 0) {
            return 0;
        }
        PyDict_Clear(self->memo);
        self->hits = self->misses = 0;
    }
    else if (PyDict_GET_SIZE(self->memo) >= self->limit) {
        if (self->hits < self->misses) {
            self->resting = REST * self->limit;
            return 0;
        }
        PyDict_Clear(self->memo);
        self->hits = self->misses = 0;
    }
    self->misses++;
    return 1;
}

static int
keyslots_init(KeySlots *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"fallback", "limit", NULL};
    PyObject *fallback;
    Py_ssize_t limit;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "On:KeySlots", names, &fallback, &limit)) {
        return -1;
    }
    if (limit < 1) {
        PyErr_SetString(PyExc_ValueError, "KeySlots: limit must be at least 1");
        return -1;
    }
    PyObject *memo = PyDict_New();
    if (memo == NULL) {
        return -1;
    }
    Py_XSETREF(self->memo, memo);
    Py_XSETREF(self->fallback, Py_NewRef(fallback));
    self->limit = limit;
    self->hits = self->misses = self->resting = 0;
    return 0;
}

static void
keyslots_dealloc(KeySlots *self)
{
    Py_CLEAR(self->memo);
    Py_CLEAR(self->fallback);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
keyslots_slot(KeySlots *self, PyObject *key)
{
    if (self->memo == NULL || self->fallback == NULL) {
        PyErr_SetString(PyExc_ValueError, "KeySlots: not initialised");
        return NULL;
    }
    if (!PyUnicode_CheckExact(key) && !PyBytes_CheckExact(key) && !PyLong_CheckExact(key)) {
        return PyObject_CallOneArg(self->fallback, key);
    }
    PyObject *slot = PyDict_GetItemWithError(self->memo, key);
    if (slot != NULL) {
        self->hits++;
        return Py_NewRef(slot);
    }
    if (PyErr_Occurred()) {
        return NULL;
    }
    slot = hot_key_slot(NULL, key);
    if (slot == Py_None) {
        Py_DECREF(slot);
        slot = PyObject_CallOneArg(self->fallback, key);
    }
    if (slot == NULL) {
        return NULL;
    }
    if (admit(self) && PyDict_SetItem(self->memo, key, slot) < 0) {
        Py_DECREF(slot);
        return NULL;
    }
    return slot;
}

PyObject *
keyslots_slot_of(PyObject *slots, PyObject *key)
{
    return keyslots_slot((KeySlots *)slots, key);
}

static PyObject *
keyslots_clear(KeySlots *self, PyObject *unused)
{
    (void)unused;
    if (self->memo != NULL) {
        PyDict_Clear(self->memo);
    }
    self->hits = self->misses = self->resting = 0;
    Py_RETURN_NONE;
}

static PyObject *
keyslots_len(KeySlots *self, void *unused)
{
    (void)unused;
    return PyLong_FromSsize_t(self->memo != NULL ? PyDict_GET_SIZE(self->memo) : 0);
}

static PyMethodDef keyslots_methods[] = {
    {"slot", (PyCFunction)keyslots_slot, METH_O,
     "slot(key, /)\n--\n\n(canonical str, variable index) of a Cache key, remembered."},
    {"clear", (PyCFunction)keyslots_clear, METH_NOARGS, "clear()\n--\n\nForget every key."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef keyslots_getset[] = {
    {"size", (getter)keyslots_len, NULL, "How many keys are remembered now.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject KeySlotsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmfs._hot.KeySlots",
    .tp_basicsize = sizeof(KeySlots),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = PyDoc_STR("KeySlots(fallback, limit)\n--\n\n"
                        "A Cache handle's memo of key -> (canonical str, index), for at most\n"
                        "``limit`` keys; ``fallback(key)`` computes what C leaves to Python."),
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)keyslots_init,
    .tp_dealloc = (destructor)keyslots_dealloc,
    .tp_methods = keyslots_methods,
    .tp_getset = keyslots_getset,
};
