/* shmfs._hot: a variable in a slot (backends/tmpfs/slabs.py), found through the index
 * (backends/tmpfs/index.py): the lookup, the lock-free get, and the put, store for store as the
 * Python code does them. Every shared word is read once into a local and checked before use. */
#include "hot.h"

#include <string.h>
#include <sys/file.h>

/* The index's shift (its log2 of buckets) and ``key``'s first bucket; 0 for an index whose
 * header does not agree with its length (damage: Python says so). */
static uint64_t
first_bucket(const uint64_t *index, Py_ssize_t length, uint64_t key, uint64_t *bucket)
{
    uint64_t shift = load(&index[IX_W_SHIFT]);
    if (shift < IX_MIN_SHIFT || shift > IX_MAX_SHIFT
        || (IX_HEADER_WORDS + (2ULL << shift)) * WORD != (uint64_t)length) {
        return 0;
    }
    *bucket = (key * FIB) >> (64 - shift);
    return shift;
}

void
prefetch_bucket(const uint64_t *index, Py_ssize_t length, uint64_t key)
{
    uint64_t bucket;
    if (index != NULL && length >= (Py_ssize_t)(IX_HEADER_WORDS * WORD)
        && first_bucket(index, length, key, &bucket) != 0) {
        __builtin_prefetch(&index[IX_HEADER_WORDS + 2 * bucket], 0, 3);
    }
}

uint64_t
find(const uint64_t *index, Py_ssize_t length, uint64_t key, uint64_t *word)
{
    uint64_t bucket, shift = first_bucket(index, length, key, &bucket);
    if (shift == 0) {
        return ~0ULL; /* damage: Python says so */
    }
    uint64_t buckets = 1ULL << shift, mask = buckets - 1, free = 0;
    for (uint64_t probe = 0; probe < buckets; probe++) {
        uint64_t at = IX_HEADER_WORDS + 2 * bucket;
        uint64_t loc = load(&index[at + 1]);
        if (loc == LOC_EMPTY) {
            *word = free ? free : at + 1;
            return LOC_EMPTY;
        }
        if (loc == LOC_TOMB) {
            free = free ? free : at + 1;
        }
        else if (load(&index[at]) == key) {
            *word = at + 1;
            return loc;
        }
        bucket = (bucket + 1) & mask;
    }
    return ~0ULL;
}

PyObject *
slab_get(Hot *self, const uint64_t *meta, uint64_t loc, uint64_t key, uint64_t gen)
{
    Slot slot;
    if (open_slot(self, loc, &slot, 1) < 0) {
        return slow();
    }
    /* The slot's lines fetched at once, not one after the other as the checks and the copy
     * reach them: at a million variables each is a miss of its own. */
    const char *first = (const char *)&slot.words[slot.at];
    for (uint64_t line = 64; line < slot.slot_size && line < 512; line += 64) {
        __builtin_prefetch(first + line, 0, 3);
    }
    uint64_t seal = load(&slot.words[slot.at]);
    uint64_t length = seal & SEAL_LENGTH_MASK;
    if (seal == 0 || load(&slot.words[slot.at + 1]) != key || length < FRAME_HEADER
        || length + SLOT_HEADER > slot.slot_size) {
        return slow(); /* freed or reused since the lookup, or damage: Python looks again */
    }
    PyObject *payload = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(length - FRAME_HEADER));
    if (payload == NULL) {
        return NULL;
    }
    const unsigned char *frame = (const unsigned char *)&slot.words[slot.at] + SLOT_HEADER;
    uint64_t head[3];
    memcpy(head, frame, FRAME_HEADER);
    memcpy(PyBytes_AS_STRING(payload), frame + FRAME_HEADER, length - FRAME_HEADER);
    __atomic_thread_fence(__ATOMIC_ACQUIRE); /* the copies before the seal is read again */
    if (load(&slot.words[slot.at]) != seal || load(&meta[M_INDEX_GEN]) != gen) {
        Py_DECREF(payload);
        return slow(); /* a writer freed the slot, or replaced the index: Python looks again */
    }
    return decode_frame(self, head, payload, slot.trusted);
}

static int
class_for(uint64_t length)
{
    for (int number = 0; number < (int)NCLASSES; number++) {
        if (CLASSES[number] >= length) {
            return number;
        }
    }
    return -1;
}

PyObject *
slab_put(Hot *self, PyObject *index_object, long codec, PyObject *pickled, Py_ssize_t same_from,
         Py_ssize_t same_to, int or_absent)
{
    uint64_t key = PyLong_AsUnsignedLongLongMask(index_object);
    if (key == (uint64_t)-1 && PyErr_Occurred()) {
        return slow();
    }
    Py_ssize_t payload_length = PyBytes_GET_SIZE(pickled);
    uint64_t length = (uint64_t)payload_length + FRAME_HEADER;
    int number = class_for(length + SLOT_HEADER);
    uint64_t *meta = meta_words(self), *index = self->index_words;
    if (number < 0 || self->closing || meta == NULL || index == NULL) {
        return slow();
    }
    Py_ssize_t index_length = self->index_buffer.len;
    uint64_t gen = self->index_gen;
    const unsigned char *payload = (const unsigned char *)PyBytes_AS_STRING(pickled);
    uint64_t head[3] = {self->first_word | (uint64_t)codec << CODEC_SHIFT, (uint64_t)payload_length, 0};
    head[2] = checksum(checksum(0, (const unsigned char *)head, 16), payload, (size_t)payload_length);

    /* The mappings stay mapped, and the handle's references held, until the caller's leave():
     * a close that a finalizer runs meanwhile only marks them (maps.c). Under the lock no
     * Python code may run (it could write this segment in this thread), so the files the put
     * will likely touch are looked up first, from an unlocked look at where things stand. */
    Slot old = {0}, new = {0};
    uint64_t free_word = M_CLASSES + 2 * (uint64_t)number, hint_word = 0;
    uint64_t hint = find(index, index_length, key, &hint_word);
    if (hint > LOC_LARGE && hint != ~0ULL) {
        (void)open_slot(self, hint, &old, 1);
    }
    uint64_t ahead = load(&meta[free_word]), bump_ahead = load(&meta[free_word + 1]);
    if (ahead == 0 && bump_ahead != 0) {
        ahead = ((uint64_t)number + 1) << LOC_CLASS_SHIFT | (bump_ahead >> 32) << LOC_FILE_SHIFT
                | (bump_ahead & 0xFFFFFFFFULL);
    }
    if (ahead != 0) {
        (void)open_slot(self, ahead, &new, 1);
    }
    if (self->closing || self->epoch != fork_epoch) {
        return slow(); /* closed, or forked, by what pickling or those lookups ran */
    }
    PyObject *result = SLOW;
    int taken = thread_lock(self);
    if (taken <= 0) {
        return taken < 0 ? NULL : slow();
    }
    if (taken == 1 && file_lock(self) != 0) {
        goto unlock_thread;
    }
    uint64_t word = 0;
    uint64_t loc = find(index, index_length, key, &word);
    uint64_t used = load(&meta[M_USED]), size = load(&meta[M_SIZE]);
    if (load(&meta[M_STATE]) != 0 || load(&meta[M_RECOVERIES]) != self->recoveries
        || load(&meta[M_WAITERS]) != 0 || load(&meta[M_INDEX_GEN]) != gen || loc == ~0ULL
        || loc == LOC_LARGE) {
        goto unlock; /* destroyed, DIRTY, recovered, waited on, another index, damage, a file */
    }
    uint64_t old_length = 0, filled = load(&index[IX_W_FILLED]);
    if (loc > LOC_TOMB) {
        if (open_slot(self, loc, &old, 0) < 0 || !old.writable) {
            goto unlock;
        }
        uint64_t seal = load(&old.words[old.at]);
        old_length = seal & SEAL_LENGTH_MASK;
        const unsigned char *now = (const unsigned char *)&old.words[old.at] + SLOT_HEADER;
        if (seal == 0 || load(&old.words[old.at + 1]) != key
            || old_length + SLOT_HEADER > old.slot_size) {
            goto unlock; /* damage: Python says which */
        }
        if (same_to > 0
            && (old_length < FRAME_HEADER + (uint64_t)same_to || memcmp(now, head, 8) != 0
                || memcmp(now + FRAME_HEADER + same_from, payload + same_from,
                          (size_t)(same_to - same_from)) != 0)) {
            goto unlock;
        }
    }
    else if ((same_to > 0 && !or_absent)
             || (filled + 1) * IX_FILL_DEN > (index_length / WORD - IX_HEADER_WORDS) / 2 * IX_FILL_NUM) {
        goto unlock; /* over a stored value only; or the index must grow first */
    }
    if (old_length > used || length > size || used - old_length > size - length) {
        goto unlock; /* full, or a count that would wrap (damage): Python says which */
    }
    uint64_t new_loc = load(&meta[free_word]), next = 0, bump = 0;
    if (new_loc != 0) {
        if ((new_loc >> LOC_CLASS_SHIFT) - 1 != (uint64_t)number || open_slot(self, new_loc, &new, 0) < 0
            || load(&new.words[new.at]) != 0) {
            goto unlock;
        }
        next = load(&new.words[new.at + 1]);
    }
    else {
        bump = load(&meta[free_word + 1]);
        if (bump == 0) {
            goto unlock; /* the class's first file: Python adds it */
        }
        new_loc = ((uint64_t)number + 1) << LOC_CLASS_SHIFT | (bump >> 32) << LOC_FILE_SHIFT
                  | (bump & 0xFFFFFFFFULL);
        if ((bump >> 32) >= LOC_FILES || open_slot(self, new_loc, &new, 0) < 0) {
            goto unlock; /* used up, or not mapped here: Python adds or maps the file */
        }
    }
    if (!new.writable || self->closing) {
        goto unlock; /* closed meanwhile by code an allocation ran */
    }
    /* From here to the end nothing runs Python code: slabs.py's allocate, write and release,
     * index.py's insert, backend.py's write, store for store. */
    store(&meta[M_STATE], self->dirty_tag);
    if (bump != 0) {
        store(&meta[free_word + 1], bump + 1);
    }
    else {
        store(&meta[free_word], next);
    }
    uint64_t stamp = load(&meta[M_STAMP]) + 1;
    store(&meta[M_STAMP], stamp);
    unsigned char *frame = (unsigned char *)&new.words[new.at] + SLOT_HEADER;
    memcpy(frame, head, FRAME_HEADER);
    memcpy(frame + FRAME_HEADER, payload, (size_t)payload_length);
    store(&new.words[new.at + 1], key);
    store(&new.words[new.at], stamp << SEAL_LENGTH_BITS | length);
    if (loc > LOC_TOMB) {
        store(&index[word], new_loc);
        uint64_t old_free = M_CLASSES + 2 * ((loc >> LOC_CLASS_SHIFT) - 1);
        store(&old.words[old.at], 0);
        __atomic_thread_fence(__ATOMIC_RELEASE); /* the seal is seen cleared before any zero */
        memset(&old.words[old.at + 2], 0, old.slot_size - SLOT_HEADER);
        store(&old.words[old.at + 1], load(&meta[old_free]));
        store(&meta[old_free], loc);
    }
    else {
        if (load(&index[word]) == LOC_EMPTY) {
            store(&index[IX_W_FILLED], filled + 1);
        }
        store(&index[word - 1], key);
        store(&index[word], new_loc);
        store(&meta[M_COUNT], load(&meta[M_COUNT]) + 1);
    }
    changed(meta, used - old_length + length);
    result = Py_None;
unlock:
    result = unlock(self, taken, result);
    return result != NULL ? Py_NewRef(result) : NULL;
unlock_thread:
    if (thread_unlock(self) < 0) {
        result = NULL;
    }
    return result != NULL ? Py_NewRef(result) : NULL;
}

/* An index's words, checked: its bucket count from its own header, or 0 if its size disagrees. */
static uint64_t
buckets_of(const uint64_t *words, Py_ssize_t length)
{
    if (length < (Py_ssize_t)(IX_HEADER_WORDS * WORD)) {
        return 0;
    }
    uint64_t shift = words[IX_W_SHIFT];
    if (shift < IX_MIN_SHIFT || shift > IX_MAX_SHIFT
        || (IX_HEADER_WORDS + (2ULL << shift)) * WORD != (uint64_t)length) {
        return 0;
    }
    return 1ULL << shift;
}

const char rehash_doc[] =
"rehash(source, target) -> entries copied\n\n"
"Insert every live entry of the index words ``source`` into the empty index words ``target``\n"
"(its header already written), and store its count of filled buckets: index.py's\n"
"create_index, in one call (a million entries in Python take most of a second).";

PyObject *
hot_rehash(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "rehash(source, target)");
        return NULL;
    }
    Py_buffer source, target;
    if (PyObject_GetBuffer(args[0], &source, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[1], &target, PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&source);
        return NULL;
    }
    const uint64_t *from = (const uint64_t *)source.buf;
    uint64_t *to = (uint64_t *)target.buf;
    uint64_t from_buckets = ((uintptr_t)from & 7) ? 0 : buckets_of(from, source.len);
    uint64_t to_buckets = ((uintptr_t)to & 7) ? 0 : buckets_of(to, target.len);
    PyObject *result = NULL;
    if (from_buckets == 0 || to_buckets == 0) {
        PyErr_SetString(PyExc_ValueError, "rehash: not index words of a consistent size");
        goto done;
    }
    uint64_t shift = to[IX_W_SHIFT], mask = to_buckets - 1, filled = 0;
    for (uint64_t bucket = 0; bucket < from_buckets; bucket++) {
        uint64_t loc = from[IX_HEADER_WORDS + 2 * bucket + 1];
        if (loc <= LOC_TOMB) {
            continue;
        }
        uint64_t key = from[IX_HEADER_WORDS + 2 * bucket];
        uint64_t at = (key * FIB) >> (64 - shift);
        uint64_t probes = 0;
        while (to[IX_HEADER_WORDS + 2 * at + 1] != LOC_EMPTY) {
            at = (at + 1) & mask;
            if (++probes == to_buckets) {
                PyErr_SetString(PyExc_ValueError, "rehash: the target index is too small");
                goto done;
            }
        }
        to[IX_HEADER_WORDS + 2 * at] = key;
        to[IX_HEADER_WORDS + 2 * at + 1] = loc;
        filled++;
    }
    to[IX_W_FILLED] = filled;
    result = PyLong_FromUnsignedLongLong(filled);
done:
    PyBuffer_Release(&target);
    PyBuffer_Release(&source);
    return result;
}
