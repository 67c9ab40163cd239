/*
 * shmfs._hot.resp_many: an HMGET's reply read off the socket, without redis-py's parser.
 *
 * Why it exists. redis-py parses an array reply in Python, about 1.5 us per element: for a
 * batch of 100 values that is three times the round trip itself. The redis backend sends the
 * HMGET, reads the raw reply into a buffer (shmfs/backends/redis/reply.py), and this scans it
 * as it arrives and, once it is whole, packs the values as the READ_MANY script packs them
 * (shmfs/packed.py), which Frames.decode (batch.c) then reads.
 *
 * The reply: RESP2 or RESP3, an array (``*n``) of ``n`` bulk strings (``$len``) or nulls
 * (``$-1``, RESP3's ``_``); or an error (``-text``, RESP3's ``!len``), handed back as its text
 * for redis-py to turn into its exception (MOVED, ASK, TRYAGAIN, READONLY, ...). Anything else
 * is a ValueError: the caller drops the connection, as for any reply it cannot read.
 */
#include "hot.h"

#include <string.h>

#define ABSENT_LENGTH 0xFFFFFFFFU

/* The decimal at ``p`` up to the line's CR: 1 read into ``*value``, 0 the line is not all
 * here yet, -1 malformed. ``*next`` is set past the line's CRLF. */
static int
read_number(const char *p, const char *end, long long *value, const char **next)
{
    const char *cr = memchr(p, '\r', (size_t)(end - p));
    if (cr == NULL || cr + 1 >= end) {
        return cr == NULL && end - p > 24 ? -1 : 0;
    }
    if (cr[1] != '\n') {
        return -1;
    }
    int negative = p < cr && *p == '-';
    const char *digit = p + negative;
    if (digit == cr || cr - digit > 18) {
        return -1;
    }
    long long number = 0;
    for (; digit < cr; digit++) {
        if (*digit < '0' || *digit > '9') {
            return -1;
        }
        number = number * 10 + (*digit - '0');
    }
    *value = negative ? -number : number;
    *next = cr + 2;
    return 1;
}

/* One element at ``*at``: 1 read (``*length`` -1 for a null, else the value's length, its
 * bytes at ``*value``; ``*at`` moved past it), 0 not all here, -1 malformed. */
static int
read_element(const char *start, const char *end, Py_ssize_t *at, long long *length,
             const char **value)
{
    const char *p = start + *at;
    if (p >= end) {
        return 0;
    }
    if (*p == '_') { /* RESP3's null */
        if (end - p < 3) {
            return 0;
        }
        if (p[1] != '\r' || p[2] != '\n') {
            return -1;
        }
        *length = -1;
        *at += 3;
        return 1;
    }
    if (*p != '$') {
        return -1;
    }
    const char *next;
    int read = read_number(p + 1, end, length, &next);
    if (read <= 0) {
        return read;
    }
    if (*length == -1) {
        *at = next - start;
        return 1;
    }
    if (*length < 0 || *length >= (long long)ABSENT_LENGTH) {
        return -1;
    }
    if (*length + 2 > end - next) {
        return 0;
    }
    if (next[*length] != '\r' || next[*length + 1] != '\n') {
        return -1;
    }
    *value = next;
    *at = (next - start) + (Py_ssize_t)*length + 2;
    return 1;
}

/* An error reply's text as a str (replacing what is not UTF-8), or NULL with 0 in ``*whole``
 * if it is not all here yet (or NULL with an error set). */
static PyObject *
error_text(const char *start, const char *end, int *whole, int *malformed)
{
    *whole = 0;
    *malformed = 0;
    if (*start == '-') {
        const char *cr = memchr(start, '\r', (size_t)(end - start));
        if (cr == NULL || cr + 1 >= end) {
            return NULL;
        }
        if (cr[1] != '\n' || cr + 2 != end) {
            *malformed = 1;
            return NULL;
        }
        *whole = 1;
        return PyUnicode_DecodeUTF8(start + 1, cr - start - 1, "replace");
    }
    long long length;
    const char *next;
    int read = read_number(start + 1, end, &length, &next);
    if (read < 0 || (read > 0 && length < 0)) {
        *malformed = 1;
        return NULL;
    }
    if (read == 0 || length + 2 > end - next) {
        return NULL;
    }
    if (next + length + 2 != end || next[length] != '\r' || next[length + 1] != '\n') {
        *malformed = 1;
        return NULL;
    }
    *whole = 1;
    return PyUnicode_DecodeUTF8(next, (Py_ssize_t)length, "replace");
}

static PyObject *
malformed(void)
{
    PyErr_SetString(PyExc_ValueError, "the server's reply is not an array of bulk strings");
    return NULL;
}

/* The values of a whole reply of ``count`` elements (its first element at ``first``) packed
 * as READ_MANY packs them, with how many were null: (bytes, absent). Every element is read
 * again here, its length checked: the state a scan resumed from is the caller's, not ours. */
static PyObject *
pack(const char *start, const char *end, Py_ssize_t first, Py_ssize_t count)
{
    Py_ssize_t at = first, payload = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        long long length;
        const char *value = NULL;
        if (read_element(start, end, &at, &length, &value) <= 0) {
            return malformed();
        }
        payload += length > 0 ? (Py_ssize_t)length : 0; /* below the reply's size */
    }
    if (at != end - start) {
        return malformed();
    }
    if (count > (PY_SSIZE_T_MAX - payload) / 4) {
        return PyErr_NoMemory();
    }
    PyObject *packed = PyBytes_FromStringAndSize(NULL, 4 * count + payload);
    if (packed == NULL) {
        return NULL;
    }
    char *heads = PyBytes_AS_STRING(packed), *into = heads + 4 * count;
    Py_ssize_t absent = 0;
    at = first;
    for (Py_ssize_t i = 0; i < count; i++) {
        long long length;
        const char *value = NULL;
        (void)read_element(start, end, &at, &length, &value); /* read whole just above */
        uint32_t head = length < 0 ? ABSENT_LENGTH : (uint32_t)length;
        memcpy(heads + 4 * i, &head, 4); /* little-endian, checked in hot.h */
        if (length < 0) {
            absent++;
        }
        else {
            memcpy(into, value, (size_t)length);
            into += length;
        }
    }
    return Py_BuildValue("(Nn)", packed, absent);
}

const char resp_many_doc[] =
"resp_many(buffer, used, count, state) -> state, (packed, absent), or an error's text\n\n"
"Scan the first ``used`` bytes of ``buffer``, a reply to an HMGET of ``count`` fields, from\n"
"``state`` (``(0, -1)`` at first). Not whole yet: the state to resume from, a tuple of two\n"
"ints (a byte offset, the elements scanned before it). Whole: the values packed as the READ_MANY script packs them (shmfs/packed.py) and how\n"
"many are null. An error reply: its text (a str). ValueError for anything else, or for bytes\n"
"past the reply's end.";

PyObject *
hot_resp_many(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    Py_ssize_t used, count, at, seen;
    if (nargs != 4 || !PyTuple_CheckExact(args[3])
        || !PyArg_ParseTuple(args[3], "nn", &at, &seen)) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "resp_many(buffer, used, count, state)");
        }
        return NULL;
    }
    used = PyLong_AsSsize_t(args[1]);
    count = PyLong_AsSsize_t(args[2]);
    if ((used == -1 || count == -1) && PyErr_Occurred()) {
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    PyObject *result = NULL;
    if (used < 1 || used > view.len || count < 0 || at < 0 || at > used || seen < -1
        || seen > count) {
        PyErr_SetString(PyExc_ValueError, "resp_many: a state or length out of range");
        goto done;
    }
    const char *start = view.buf, *end = start + used;
    if (seen == -1) {
        if (*start == '-' || *start == '!') {
            int whole, bad;
            result = error_text(start, end, &whole, &bad);
            if (result == NULL && !PyErr_Occurred()) {
                result = bad ? malformed() : Py_BuildValue("(nn)", (Py_ssize_t)0, (Py_ssize_t)-1);
            }
            goto done;
        }
        if (*start != '*') {
            result = malformed();
            goto done;
        }
        long long elements;
        const char *next;
        int read = read_number(start + 1, end, &elements, &next);
        if (read < 0 || (read > 0 && elements != count)) {
            result = malformed();
            goto done;
        }
        if (read == 0) {
            result = Py_BuildValue("(nn)", (Py_ssize_t)0, (Py_ssize_t)-1);
            goto done;
        }
        at = next - start;
        seen = 0;
    }
    for (; seen < count; seen++) {
        long long length;
        const char *value;
        Py_ssize_t before = at;
        int read = read_element(start, end, &at, &length, &value);
        if (read < 0) {
            result = malformed();
            goto done;
        }
        if (read == 0) {
            at = before;
            break;
        }
    }
    if (seen < count) {
        result = Py_BuildValue("(nn)", at, seen);
    }
    else {
        /* The first element's place: after the array's header line. */
        const char *header_end = memchr(start, '\n', (size_t)used);
        result = *start == '*' && header_end != NULL
                     ? pack(start, end, header_end + 1 - start, count)
                     : malformed();
    }
done:
    PyBuffer_Release(&view);
    return result;
}

const char resp_hmget_doc[] =
"resp_hmget(key, indexes) -> bytes, or None\n\n"
"``HMGET key indexes...`` in the wire protocol (``key`` bytes; ``indexes`` a list or tuple of\n"
"ints in int64 range); None if an index is not such an int (the caller packs it in Python).";

PyObject *
hot_resp_hmget(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2 || !PyBytes_CheckExact(args[0])
        || !(PyList_CheckExact(args[1]) || PyTuple_CheckExact(args[1]))) {
        PyErr_SetString(PyExc_TypeError, "resp_hmget(key: bytes, indexes: list | tuple)");
        return NULL;
    }
    /* A tuple held across the loop: a list could change under us if an int's code ran. */
    PyObject *indexes = PySequence_Tuple(args[1]);
    if (indexes == NULL) {
        return NULL;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(indexes), keylen = PyBytes_GET_SIZE(args[0]);
    PyObject *result = NULL;
    /* Each index: "$20\r\n" and at most 20 digits (a sign included) and "\r\n". */
    if (count > (PY_SSIZE_T_MAX - keylen - 64) / 32) {
        result = PyErr_NoMemory();
        goto done;
    }
    char *packed = PyMem_Malloc((size_t)(64 + keylen + 32 * count));
    if (packed == NULL) {
        result = PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t used = (Py_ssize_t)snprintf(packed, 64, "*%zd\r\n$5\r\nHMGET\r\n$%zd\r\n",
                                           count + 2, keylen);
    memcpy(packed + used, PyBytes_AS_STRING(args[0]), (size_t)keylen);
    used += keylen;
    packed[used++] = '\r';
    packed[used++] = '\n';
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *index = PyTuple_GET_ITEM(indexes, i);
        int overflow = 0;
        long long value = PyLong_CheckExact(index) ? PyLong_AsLongLongAndOverflow(index, &overflow)
                                                   : 0;
        if (!PyLong_CheckExact(index) || overflow != 0) {
            PyMem_Free(packed);
            result = Py_NewRef(Py_None);
            goto done;
        }
        /* By hand: snprintf cost 100 ns an index, as much as the scan of its value. */
        char digits[24], *first = digits + sizeof(digits);
        unsigned long long magnitude = value < 0 ? 0ULL - (unsigned long long)value
                                                 : (unsigned long long)value;
        do {
            *--first = (char)('0' + magnitude % 10);
            magnitude /= 10;
        } while (magnitude != 0);
        if (value < 0) {
            *--first = '-';
        }
        int length = (int)(digits + sizeof(digits) - first);
        packed[used++] = '$';
        if (length >= 10) {
            packed[used++] = (char)('0' + length / 10);
        }
        packed[used++] = (char)('0' + length % 10);
        packed[used++] = '\r';
        packed[used++] = '\n';
        memcpy(packed + used, first, (size_t)length);
        used += length;
        packed[used++] = '\r';
        packed[used++] = '\n';
    }
    result = PyBytes_FromStringAndSize(packed, used);
    PyMem_Free(packed);
done:
    Py_DECREF(indexes);
    return result;
}
