/* shmfs._hot: the pickles of plain values, read without pickle.loads.
 *
 * Why it exists. Most small values are plain (builtin scalars in builtin containers), and
 * pickle.loads spends most of its time on a small one setting up and tearing down an
 * unpickler: about 2,900 instructions for a four-item tuple of short strs and floats, against
 * 400 here, and a Cache hit costs about 11,000 in all. So a get tries this first, for the
 * pickling codecs; a pickle with any opcode not below, or anything odd, is declined, and
 * pickle.loads reads it as before (a declined pickle has run no code: only builtin scalars
 * and containers were made, and they are dropped).
 *
 * The opcodes are those pickle.dumps writes for plain values at protocols 4 and 5 (see
 * Lib/pickletools.py for each one's definition), and each makes exactly what pickle.loads
 * makes: the same types, the same values, the same sharing of objects through the memo.
 * tests/test_cache_c.py holds the two equal over generated values and fuzzed bytes. */
#include "hot.h"

#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define STACK 256  /* deeper or wider pickles are declined: plain values are small */
#define MARKS 64
#define MEMO 256

typedef struct {
    const unsigned char *at;
    const unsigned char *end;
    PyObject *stack[STACK];
    Py_ssize_t depth;
    Py_ssize_t marks[MARKS];
    int nmarks;
    PyObject *memo[MEMO];
    Py_ssize_t nmemo;
} Reader;

/* The next ``count`` bytes, or NULL if the pickle is shorter. */
static const unsigned char *
take(Reader *r, Py_ssize_t count)
{
    if (count < 0 || r->end - r->at < count) {
        return NULL;
    }
    const unsigned char *bytes = r->at;
    r->at += count;
    return bytes;
}

/* ``count`` (at most 8) little-endian bytes: the host's order (hot.h), so one load. */
static uint64_t
little(const unsigned char *bytes, int count)
{
    uint64_t value = 0;
    memcpy(&value, bytes, (size_t)count);
    return value;
}

/* Push a new reference (NULL: an error is set, or a decline with none). 0, or -1. */
static int
push(Reader *r, PyObject *item)
{
    if (item == NULL) {
        return -1;
    }
    if (r->depth == STACK) {
        Py_DECREF(item);
        return -1;
    }
    r->stack[r->depth++] = item;
    return 0;
}

/* The last mark, popped; -1 if there is none. */
static Py_ssize_t
pop_mark(Reader *r)
{
    return r->nmarks > 0 ? r->marks[--r->nmarks] : -1;
}

/* How far down an opcode may reach: pickle.loads refuses ("unexpected MARK found") any that
 * takes an item from below the last mark, so this reader declines it too. */
static Py_ssize_t
fence(const Reader *r)
{
    return r->nmarks > 0 ? r->marks[r->nmarks - 1] : 0;
}

/* The items from ``from`` up, made into a tuple in their place. */
static int
to_tuple(Reader *r, Py_ssize_t from)
{
    if (from < fence(r) || from > r->depth) {
        return -1;
    }
    PyObject *tuple = PyTuple_New(r->depth - from);
    if (tuple == NULL) {
        return -1;
    }
    for (Py_ssize_t i = from; i < r->depth; i++) {
        PyTuple_SET_ITEM(tuple, i - from, r->stack[i]);  /* the stack's reference moves */
    }
    r->depth = from;
    return push(r, tuple);
}

/* APPENDS, SETITEMS, ADDITEMS: the items above the mark into the container below it. */
static int
fill(Reader *r, Py_ssize_t from, int kind)
{
    if (from - 1 < fence(r) || from > r->depth || (r->depth - from) % (kind == 's' ? 2 : 1) != 0) {
        return -1;
    }
    PyObject *into = r->stack[from - 1];
    int failed = 0;
    for (Py_ssize_t i = from; i < r->depth && !failed; i += kind == 's' ? 2 : 1) {
        if (kind == 'a') {
            failed = !PyList_CheckExact(into) || PyList_Append(into, r->stack[i]) < 0;
        }
        else if (kind == 's') {  /* plain keys: hashing and comparing them runs no Python code */
            failed = !PyDict_CheckExact(into) || PyDict_SetItem(into, r->stack[i], r->stack[i + 1]) < 0;
        }
        else {
            failed = !PySet_CheckExact(into) || PySet_Add(into, r->stack[i]) < 0;
        }
    }
    for (Py_ssize_t i = from; i < r->depth; i++) {
        Py_DECREF(r->stack[i]);
    }
    r->depth = from;
    return failed ? -1 : 0;
}

/* A pickled str: UTF-8 with surrogatepass, as pickle.loads decodes it. Most are ASCII, which
 * is copied as it is (half of a short str's decoding goes to the decoder's set-up), eight bytes
 * at a time, each word checked as it is stored: the copy is what is checked, even when the
 * bytes are shared memory a writer changes meanwhile (batch.c reads them in place). Strs of no
 * or one char are the decoder's, which hands out the interpreter's shared ones. */
static PyObject *
text_of(const unsigned char *body, Py_ssize_t count)
{
    if (count >= 2 && count <= 256) {
        PyObject *text = PyUnicode_New(count, 127);
        if (text == NULL) {
            return NULL;
        }
        unsigned char *into = PyUnicode_DATA(text);
        uint64_t high = 0, one, two;
        Py_ssize_t i = 0;
#ifdef __SSE2__
        __m128i wide = _mm_setzero_si128();
        for (; i + 16 <= count; i += 16) {
            __m128i block = _mm_loadu_si128((const __m128i *)(body + i));
            wide = _mm_or_si128(wide, block);
            _mm_storeu_si128((__m128i *)(into + i), block);
        }
        high = _mm_movemask_epi8(wide) != 0 ? 0x80 : 0;
#endif
        for (; i + 16 <= count; i += 16) {
            memcpy(&one, body + i, 8);
            memcpy(&two, body + i + 8, 8);
            high |= one | two;
            memcpy(into + i, &one, 8);
            memcpy(into + i + 8, &two, 8);
        }
        if (i + 8 <= count) {
            memcpy(&one, body + i, 8);
            high |= one;
            memcpy(into + i, &one, 8);
            i += 8;
        }
        if (i < count && count >= 8) { /* the last eight bytes, over some already copied */
            memcpy(&one, body + count - 8, 8);
            high |= one;
            memcpy(into + count - 8, &one, 8);
        }
        else {
            for (; i < count; i++) {
                into[i] = body[i];
                high |= into[i];
            }
        }
        if ((high & 0x8080808080808080ULL) == 0) {
            return text;
        }
        Py_DECREF(text); /* never seen: its maxchar's promise broken only here */
    }
    return PyUnicode_DecodeUTF8((const char *)body, count, "surrogatepass");
}

/* A str, bytes or long of a length-prefixed opcode; ``size``: the prefix's bytes. */
static PyObject *
counted(Reader *r, int size, int kind)
{
    const unsigned char *prefix = take(r, size);
    if (prefix == NULL) {
        return NULL;
    }
    uint64_t count = little(prefix, size);
    const unsigned char *body = count <= PY_SSIZE_T_MAX ? take(r, (Py_ssize_t)count) : NULL;
    if (body == NULL) {
        return NULL;
    }
    if (kind == 'u') {
        return text_of(body, (Py_ssize_t)count);
    }
    if (kind == 'b') {
        return PyBytes_FromStringAndSize((const char *)body, (Py_ssize_t)count);
    }
    if (count > 8) {  /* LONG1 past 64 bits: declined */
        return NULL;
    }
    uint64_t bits = little(body, (int)count);
    if (count > 0 && count < 8 && body[count - 1] & 0x80) {
        bits |= ~0ULL << (8 * count);  /* two's complement, sign-extended */
    }
    return PyLong_FromLongLong((long long)bits);
}

/* One opcode. 1: STOP; 0: go on; -1: declined or failed (an exception may be set). */
static int
step(Reader *r)
{
    const unsigned char *op = take(r, 1);
    const unsigned char *arg;
    if (op == NULL) {
        return -1;
    }
    switch (*op) {
    case 0x80: /* PROTO */
        return (arg = take(r, 1)) != NULL && *arg >= 2 && *arg <= 5 ? 0 : -1;
    case 0x95: /* FRAME: its bytes follow, and must be there (pickle.loads checks as much) */
        return (arg = take(r, 8)) != NULL && little(arg, 8) <= (uint64_t)(r->end - r->at) ? 0 : -1;
    case '.': /* STOP: pickle.loads takes the top item, whatever is below; this, only one */
        return r->depth == 1 && r->nmarks == 0 ? 1 : -1;
    case 'N':
        return push(r, Py_NewRef(Py_None));
    case 0x88:
        return push(r, Py_NewRef(Py_True));
    case 0x89:
        return push(r, Py_NewRef(Py_False));
    case 'K': /* BININT1 */
        return (arg = take(r, 1)) != NULL ? push(r, PyLong_FromLong(arg[0])) : -1;
    case 'M': /* BININT2 */
        return (arg = take(r, 2)) != NULL ? push(r, PyLong_FromLong((long)little(arg, 2))) : -1;
    case 'J': /* BININT: signed */
        return (arg = take(r, 4)) != NULL ? push(r, PyLong_FromLong((int32_t)(uint32_t)little(arg, 4))) : -1;
    case 0x8a: /* LONG1 */
        return push(r, counted(r, 1, 'l'));
    case 'G': { /* BINFLOAT: big-endian */
        if ((arg = take(r, 8)) == NULL) {
            return -1;
        }
        uint64_t bits = __builtin_bswap64(little(arg, 8));
        double value;
        memcpy(&value, &bits, sizeof value);
        return push(r, PyFloat_FromDouble(value));
    }
    case 0x8c: /* SHORT_BINUNICODE */
        return push(r, counted(r, 1, 'u'));
    case 'X': /* BINUNICODE */
        return push(r, counted(r, 4, 'u'));
    case 'C': /* SHORT_BINBYTES */
        return push(r, counted(r, 1, 'b'));
    case 'B': /* BINBYTES */
        return push(r, counted(r, 4, 'b'));
    case 0x94: /* MEMOIZE */
        if (r->depth <= fence(r) || r->nmemo == MEMO) {
            return -1;
        }
        r->memo[r->nmemo++] = Py_NewRef(r->stack[r->depth - 1]);
        return 0;
    case 'h': /* BINGET */
    case 'j': { /* LONG_BINGET */
        int size = *op == 'h' ? 1 : 4;
        if ((arg = take(r, size)) == NULL) {
            return -1;
        }
        uint64_t at = little(arg, size);
        return at < (uint64_t)r->nmemo ? push(r, Py_NewRef(r->memo[at])) : -1;
    }
    case ')':
        return push(r, PyTuple_New(0));
    case 0x85: /* TUPLE1 */
    case 0x86: /* TUPLE2 */
    case 0x87: /* TUPLE3 */
        return to_tuple(r, r->depth - (*op - 0x84));
    case '(': /* MARK */
        if (r->nmarks == MARKS) {
            return -1;
        }
        r->marks[r->nmarks++] = r->depth;
        return 0;
    case 't': /* TUPLE */
        return to_tuple(r, pop_mark(r));
    case ']':
        return push(r, PyList_New(0));
    case '}':
        return push(r, PyDict_New());
    case 0x8f: /* EMPTY_SET */
        return push(r, PySet_New(NULL));
    case 'a': /* APPEND */
        return fill(r, r->depth - 1, 'a');
    case 'e': /* APPENDS */
        return fill(r, pop_mark(r), 'a');
    case 's': /* SETITEM */
        return fill(r, r->depth - 2, 's');
    case 'u': /* SETITEMS */
        return fill(r, pop_mark(r), 's');
    case 0x90: /* ADDITEMS */
        return fill(r, pop_mark(r), 'S');
    case 0x91: { /* FROZENSET */
        Py_ssize_t from = pop_mark(r);
        if (to_tuple(r, from) < 0) {
            return -1;
        }
        PyObject *items = r->stack[--r->depth];
        PyObject *frozen = PyFrozenSet_New(items);
        Py_DECREF(items);
        return push(r, frozen);
    }
    default:
        return -1;
    }
}

/* The commonest value, a str alone: PROTO, FRAME (if there), SHORT_BINUNICODE or BINUNICODE,
 * MEMOIZE (if there), STOP at the end; read without the reader's set-up and dispatch, checked
 * as the reader checks each of those opcodes. 0: another pickle (the reader reads it); 1: this
 * one, its str (or NULL with an error set, as the reader would fail) in ``text``. */
static int
lone_text(const unsigned char *at, const unsigned char *end, PyObject **text)
{
    if (end - at < 2 || at[0] != 0x80 || at[1] < 2 || at[1] > 5) {
        return 0;
    }
    at += 2;
    if (end - at >= 9 && at[0] == 0x95) {
        if (little(at + 1, 8) > (uint64_t)(end - at - 9)) {
            return 0;
        }
        at += 9;
    }
    uint64_t count;
    if (end - at >= 2 && at[0] == 0x8c) {
        count = at[1];
        at += 2;
    }
    else if (end - at >= 5 && at[0] == 'X') {
        count = little(at + 1, 4);
        at += 5;
    }
    else {
        return 0;
    }
    if (count > (uint64_t)(end - at)) {
        return 0;
    }
    const unsigned char *tail = at + count;
    if (!(end - tail == 1 && tail[0] == '.') && !(end - tail == 2 && tail[0] == 0x94 && tail[1] == '.')) {
        return 0;
    }
    *text = text_of(at, (Py_ssize_t)count);
    return 1;
}

PyObject *
plain_loads(const char *data, Py_ssize_t length)
{
    PyObject *text;
    if (lone_text((const unsigned char *)data, (const unsigned char *)data + length, &text)) {
        return text;
    }
    Reader r;  /* about 6 KiB: on the stack, as a call's worth of the interpreter's own */
    r.at = (const unsigned char *)data;
    r.end = r.at + length;
    r.depth = 0;
    r.nmarks = 0;
    r.nmemo = 0;
    int done;
    while ((done = step(&r)) == 0) {
    }
    PyObject *value = done == 1 && r.at == r.end ? Py_NewRef(r.stack[0]) : NULL;
    for (Py_ssize_t i = 0; i < r.depth; i++) {
        Py_DECREF(r.stack[i]);
    }
    for (Py_ssize_t i = 0; i < r.nmemo; i++) {
        Py_DECREF(r.memo[i]);
    }
    return value;
}

const char plain_loads_doc[] =
    "plain_loads(data, /)\n--\n\n"
    "The value pickle.loads(data) gives, for a pickle of a plain value (what the C get reads\n"
    "without pickle); SLOW for any other pickle, and for bytes that are no pickle.";

PyObject *
hot_plain_loads(PyObject *module, PyObject *data)
{
    (void)module;
    if (!PyBytes_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "plain_loads: bytes expected");
        return NULL;
    }
    PyObject *value = plain_loads(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data));
    return value != NULL ? value : slow();
}
