/*
 * shmfs._hot: get_many, the batch read of Hot (tmpfs) and SysvHot (sysv), in one call each.
 *
 * Why it exists. A batch read in Python pays, per index, a call into the single get and the
 * loop's own steps, and around the batch the segment lock: on tmpfs that made a batch of 100
 * cost as much as 100 gets. Here the whole batch is one call, with no bytes object made per
 * plain value: tmpfs's slots and a redis reply are read where they lie, sysv's chunks are
 * copied into one scratch buffer under the lock and read from there.
 *
 * One consistent step, as the Python path promises:
 *   tmpfs: no lock. Every tmpfs writer sets DIRTY in the metadata's STATE word before its
 *        first change and bumps GENERATION before clearing it (backend.py's write, write_many,
 *        delete; put.c; check.py's repair); so STATE clear and GENERATION unchanged from
 *        before the first read to after the last one (a seqlock's read side over the whole
 *        segment) prove that no write landed in the middle. Otherwise the batch goes the
 *        Python way, under the lock. The reads include the checksums and the unpickling of
 *        plain values, done in the slots themselves: a writer may change those bytes
 *        meanwhile, so every length is a local checked before use (every read stays inside
 *        the mapping, which is kept until leave()), unpickle.c reads any bytes without harm,
 *        and what it made is dropped unless the second look (tmpfs_unchanged) passes. A
 *        payload for a decoder that runs code is copied before that look and decoded after it.
 *   sysv: PHP's writers keep no such word, so the semaphore is taken once (or found this
 *        thread's already) around every copy, as sysv.c's get takes it around one.
 *
 * All or nothing. Anything the single C get would answer SLOW for (an index not an int in
 * range, a variable the index or the chain index does not lead to, a slot changing, a large
 * variable the handle does not map, damage, a signed or untrusted frame, a lock held
 * elsewhere) makes the whole batch SLOW, having run no decoder: every frame is checked
 * before the first decoder runs, so no decoder runs twice (unpickle.c, which runs no code, may
 * have read some plain values by then: they are dropped). The Python path then reads the batch
 * as it always has and reports any error, naming the index. A decoder that fails raises what
 * the single get raises (decode_with); an absent variable is left out of the result, as in
 * Python (tmpfs only: on sysv an index the chain index does not remember is SLOW).
 */
#include "sysv.h"

#include <string.h>

/* One index of a batch: its frame's head, where its payload is read, and its value. */
typedef struct {
    uint64_t head[3];
    int64_t key;          /* the index */
    const char *payload;  /* the payload's first byte: in place (a tmpfs slot, a reply), or in
                           * the scratch buffer once every copy is made (batch_placed) */
    Py_ssize_t at;        /* the payload's offset in the scratch buffer; IN_PLACE; or ABSENT_AT */
    Py_ssize_t length;    /* payload bytes */
    const uint64_t *seal_word; /* tmpfs, in place: the slot's seal, looked at again at the end */
    uint64_t seal;
    PyObject *value;      /* decoded; or, if pending, the payload's bytes for its decoder */
    int pending;
    int trusted;
    int framed;           /* sysv: 0 for PHP's bare bytes */
} Entry;

#define ABSENT_AT (-1)
#define IN_PLACE (-2)

typedef struct {
    PyObject *indexes;  /* a tuple of exact ints: held, so no code can change it under us */
    Py_ssize_t count;
    Entry *entries;
    Py_ssize_t read;    /* the entries batch_read has been through: their values are set */
    char *scratch;
    Py_ssize_t used;
    Py_ssize_t capacity;
} Batch;

/* The indexes as a tuple of exact ints in int64 range; 0 with nothing set if they are not
 * (the Python path checks them and raises), -1 on an error. */
static int
batch_open(Batch *batch, PyObject *indexes)
{
    memset(batch, 0, sizeof(*batch));
    if (PyTuple_CheckExact(indexes)) {
        batch->indexes = Py_NewRef(indexes);
    }
    else if (PyList_CheckExact(indexes)) {
        batch->indexes = PyList_AsTuple(indexes);
        if (batch->indexes == NULL) {
            return -1;
        }
    }
    else {
        return 0;
    }
    batch->count = PyTuple_GET_SIZE(batch->indexes);
    /* Not zeroed: every entry is filled in before it is read (batch_read's first ``read``). */
    batch->entries = PyMem_Malloc((size_t)(batch->count ? batch->count : 1) * sizeof(Entry));
    if (batch->entries == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < batch->count; i++) {
        PyObject *index = PyTuple_GET_ITEM(batch->indexes, i);
        int overflow = 0;
        if (!PyLong_CheckExact(index)) {
            return 0;
        }
        batch->entries[i].key = PyLong_AsLongLongAndOverflow(index, &overflow);
        if (overflow != 0) {
            return 0;
        }
    }
    return 1;
}

static void
batch_close(Batch *batch)
{
    for (Py_ssize_t i = 0; i < batch->read; i++) {
        Py_CLEAR(batch->entries[i].value);
    }
    Py_CLEAR(batch->indexes);
    PyMem_Free(batch->entries);
    PyMem_Free(batch->scratch);
    batch->entries = NULL;
    batch->scratch = NULL;
}

/* Room for ``length`` more bytes in the scratch buffer: their first byte, or NULL (no memory:
 * an error set). No Python code runs here, so it may be called with the lock held. */
static char *
batch_room(Batch *batch, Py_ssize_t length)
{
    if (length > PY_SSIZE_T_MAX / 4 - batch->used) {
        PyErr_NoMemory();
        return NULL;
    }
    if (batch->used + length > batch->capacity) {
        Py_ssize_t capacity = (batch->used + length) * 2 + 4096;
        char *grown = PyMem_Realloc(batch->scratch, (size_t)capacity);
        if (grown == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        batch->scratch = grown;
        batch->capacity = capacity;
    }
    return batch->scratch + batch->used;
}

/* A frame of ``length`` bytes (header included) copied into the batch as ``entry``: its
 * header into the entry, its payload into the scratch buffer. 0, or -1 (no memory). No Python
 * code runs here. */
static int
copy_frame(Batch *batch, Entry *entry, const unsigned char *frame, Py_ssize_t length)
{
    char *into = batch_room(batch, length - FRAME_HEADER);
    if (into == NULL) {
        return -1;
    }
    memcpy(entry->head, frame, FRAME_HEADER);
    memcpy(into, frame + FRAME_HEADER, (size_t)(length - FRAME_HEADER));
    entry->at = batch->used;
    entry->length = length - FRAME_HEADER;
    entry->framed = 1;
    batch->used += length - FRAME_HEADER;
    return 0;
}

/* A frame of ``length`` bytes read where it is, as ``entry``: its header copied into the
 * entry, its payload left in place. */
static void
place_frame(Entry *entry, const unsigned char *frame, Py_ssize_t length)
{
    memcpy(entry->head, frame, FRAME_HEADER);
    entry->payload = (const char *)frame + FRAME_HEADER;
    entry->at = IN_PLACE;
    entry->length = length - FRAME_HEADER;
    entry->framed = 1;
}

/* Every copied payload's place, now that the scratch buffer no longer moves. */
static void
batch_placed(Batch *batch)
{
    for (Py_ssize_t i = 0; i < batch->count; i++) {
        Entry *entry = &batch->entries[i];
        if (entry->at >= 0) {
            entry->payload = batch->scratch + entry->at;
        }
    }
}

/* The crc of the last frame header's first 16 bytes, kept for the next one: most batches
 * repeat them (one codec, values of one length). */
typedef struct {
    uint64_t word;
    uint64_t length;
    uint32_t crc;
    int set;
} HeadCrc;

static uint32_t
head_crc(HeadCrc *kept, const uint64_t head[3])
{
    if (!kept->set || head[0] != kept->word || head[1] != kept->length) {
        kept->word = head[0];
        kept->length = head[1];
        kept->crc = checksum(0, (const unsigned char *)head, 16);
        kept->set = 1;
    }
    return kept->crc;
}

/* Whether a framed entry's header passes the checks decode_frame makes (the frame's magic,
 * version and flags, a known codec, its length, a pickling codec only from a trusted writer);
 * its checksum is the caller's to check. */
static int
frame_fits(const Entry *entry, uint64_t first_word, PyObject *const decoders[256],
           const char executes[256])
{
    unsigned codec = (unsigned)(entry->head[0] >> CODEC_SHIFT) & 0xFF;
    return (entry->head[0] & ~(0xFFULL << CODEC_SHIFT)) == first_word && decoders[codec] != NULL
           && entry->head[1] == (uint64_t)entry->length && (!executes[codec] || entry->trusted);
}

/* Whether every framed entry may be decoded here: frame_fits, and its checksum. The checksums
 * are computed together (checksum_many), each from its header's first 16 bytes on. 1, 0
 * (damage, a signature, an untrusted writer: Python says which), or -1 (no memory). */
static int
batch_checked(Batch *batch, uint64_t first_word, PyObject *const decoders[256],
              const char executes[256])
{
    Py_ssize_t count = 0;
    HeadCrc kept = {0};
    const unsigned char **data = PyMem_Malloc((size_t)(batch->count + 1) * sizeof(*data));
    size_t *lengths = PyMem_Malloc((size_t)(batch->count + 1) * sizeof(*lengths));
    uint32_t *crcs = PyMem_Malloc((size_t)(batch->count + 1) * sizeof(*crcs));
    int result = data != NULL && lengths != NULL && crcs != NULL ? 1 : -1;
    for (Py_ssize_t i = 0; i < batch->count && result == 1; i++) {
        const Entry *entry = &batch->entries[i];
        if (entry->at == ABSENT_AT || !entry->framed) {
            continue; /* absent (its other fields unset), or PHP's bare bytes */
        }
        if (!frame_fits(entry, first_word, decoders, executes)) {
            result = 0;
        }
        crcs[count] = head_crc(&kept, entry->head);
        data[count] = (const unsigned char *)entry->payload;
        lengths[count++] = (size_t)entry->length;
    }
    if (result == 1) {
        checksum_many(count, data, lengths, crcs);
        count = 0;
        for (Py_ssize_t i = 0; i < batch->count && result == 1; i++) {
            const Entry *entry = &batch->entries[i];
            if (entry->at != ABSENT_AT && entry->framed && entry->head[2] != crcs[count++]) {
                result = 0;
            }
        }
    }
    PyMem_Free(data);
    PyMem_Free(lengths);
    PyMem_Free(crcs);
    if (result < 0) {
        PyErr_NoMemory();
    }
    return result;
}

/* The batch's ``i``th entry read as far as no code runs: a plain pickle's value made by
 * unpickle.c, straight from its payload; any other payload copied into a bytes object, left
 * pending for its decoder (batch_result), which may run code. Where the payload is still shared
 * memory (tmpfs), a writer may change it meanwhile: unpickle.c reads any bytes safely (every
 * length it reads is checked against the payload's, which was checked before), and what it made
 * is kept only if the caller finds afterwards that no write landed; a pending copy is decoded
 * only then. 0, or -1 with an error set. */
static inline int
entry_read(Batch *batch, Py_ssize_t i, PyObject *const decoders[256], PyObject *native)
{
    Entry *entry = &batch->entries[i];
    entry->value = NULL;
    entry->pending = 0;
    batch->read = i + 1;
    if (entry->at == ABSENT_AT) {
        return 0;
    }
    PyObject *decode = native;
    if (entry->framed) {
        decode = decoders[(entry->head[0] >> CODEC_SHIFT) & 0xFF];
    }
    if (decode == pickle_loads) {
        entry->value = plain_loads(entry->payload, entry->length);
        if (entry->value != NULL) {
            return 0;
        }
        if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_Exception)) {
            return -1;
        }
        PyErr_Clear(); /* declined: pickle.loads reads it (decode_with tries unpickle.c again) */
    }
    entry->value = PyBytes_FromStringAndSize(entry->payload, entry->length);
    if (entry->value == NULL) {
        return -1;
    }
    entry->pending = 1;
    return 0;
}

/* Every entry read (entry_read). 0, or -1 with an error set. */
static int
batch_read(Batch *batch, PyObject *const decoders[256], PyObject *native)
{
    for (Py_ssize_t i = 0; i < batch->count; i++) {
        if (entry_read(batch, i, decoders, native) < 0) {
            return -1;
        }
    }
    return 0;
}

/* The dict of a batch's keys, None for values, kept from an earlier batch (see result_dict),
 * with that batch's indexes; and a fingerprint of the last batch that did not match them. */
static PyObject *kept_keys;
static PyObject *kept_indexes;
static uint64_t missed_print;

/* Batches up to this many keys keep their dict of keys (the ints it holds stay alive). */
#define KEPT_KEYS_MAX 4096

/* Whether every entry has a value and ``indexes`` (a kept batch's) are the batch's, in order
 * (the same ints, or equal ones: no code runs). */
static int
keys_match(const Batch *batch, PyObject *indexes)
{
    if (PyTuple_GET_SIZE(indexes) != batch->count) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < batch->count; i++) {
        PyObject *kept = PyTuple_GET_ITEM(indexes, i), *index = PyTuple_GET_ITEM(batch->indexes, i);
        if (batch->entries[i].value == NULL
            || (kept != index && PyObject_RichCompareBool(kept, index, Py_EQ) != 1)) {
            return 0;
        }
    }
    return 1;
}

/* The batch's values into a new dict, in the order asked. A dict grown key by key is resized
 * on the way (five times for 100 keys) and each key is inserted anew, which costs about as
 * much as finding and unpickling a short value; a copy of a dict of the same keys is made at
 * its size at once (CPython copies its table whole), and only its values are replaced. So the
 * keys of a batch asked twice in a row (a fingerprint of its indexes tells) are kept, as a
 * dict with None for values, and used while batches ask for the same keys: the common case
 * of a page or a job reading the same variables again and again. */
static PyObject *
result_dict(Batch *batch)
{
    PyObject *found = NULL;
    if (kept_keys != NULL && keys_match(batch, kept_indexes)) {
        PyObject *keys = Py_NewRef(kept_keys); /* held: a collection may replace it meanwhile */
        found = PyDict_Copy(keys);
        Py_DECREF(keys);
        for (Py_ssize_t i = 0; found != NULL && i < batch->count; i++) {
            if (PyDict_SetItem(found, PyTuple_GET_ITEM(batch->indexes, i), batch->entries[i].value) < 0) {
                Py_CLEAR(found);
            }
        }
        return found;
    }
    found = PyDict_New();
    uint64_t print = (uint64_t)batch->count;
    for (Py_ssize_t i = 0; found != NULL && i < batch->count; i++) {
        const Entry *entry = &batch->entries[i];
        PyObject *index = PyTuple_GET_ITEM(batch->indexes, i);
        print = (print ^ (uint64_t)entry->key) * 0x9E3779B97F4A7C15ULL;
        if (entry->value != NULL && PyDict_SetItem(found, index, entry->value) < 0) {
            Py_CLEAR(found);
        }
    }
    if (found == NULL || PyDict_GET_SIZE(found) != batch->count || batch->count > KEPT_KEYS_MAX) {
        return found; /* an index absent or asked twice: no keys kept */
    }
    if (print != missed_print) {
        missed_print = print; /* seen once: kept if the next batch asks the same */
        return found;
    }
    PyObject *keys = PyDict_New();
    for (Py_ssize_t i = 0; keys != NULL && i < batch->count; i++) {
        if (PyDict_SetItem(keys, PyTuple_GET_ITEM(batch->indexes, i), Py_None) < 0) {
            Py_CLEAR(keys);
        }
    }
    if (keys == NULL) {
        PyErr_Clear(); /* (no memory: the result stands, without kept keys) */
        return found;
    }
    /* Both set before either old one is let go (which can run code that batches again). */
    PyObject *old_keys = kept_keys, *old_indexes = kept_indexes;
    kept_keys = keys;
    kept_indexes = Py_NewRef(batch->indexes);
    Py_XDECREF(old_keys);
    Py_XDECREF(old_indexes);
    return found;
}

/* The batch's values into a new dict, in order, the pending ones decoded first; SLOW (nothing
 * returned) if a decoder declined. Code runs here: the tables are the caller's to keep. */
static PyObject *
batch_result(Batch *batch, PyObject *const decoders[256], PyObject *const failures[256],
             PyObject *native)
{
    for (Py_ssize_t i = 0; i < batch->count; i++) {
        Entry *entry = &batch->entries[i];
        if (!entry->pending) {
            continue;
        }
        PyObject *decode = native, *failed = NULL;
        if (entry->framed) {
            unsigned codec = (unsigned)(entry->head[0] >> CODEC_SHIFT) & 0xFF;
            decode = decoders[codec];
            failed = failures[codec];
        }
        PyObject *payload = entry->value;
        entry->value = NULL;
        entry->pending = 0;
        PyObject *value = decode_with(decode, failed, payload); /* steals the payload */
        if (value == NULL || value == SLOW) {
            return value; /* NULL: the decoder's error; SLOW (a new reference): Python's way */
        }
        entry->value = value;
    }
    return result_dict(batch);
}

/* The batch read and decoded, its entries all found (1 from ``found``), for a batch whose
 * payloads no longer change (copied, or in bytes that are never written). */
static PyObject *
batch_finish(Batch *batch, int found, uint64_t first_word, PyObject *const decoders[256],
             PyObject *const failures[256], const char executes[256], PyObject *native)
{
    if (found > 0) {
        batch_placed(batch);
        found = batch_checked(batch, first_word, decoders, executes);
    }
    if (found > 0) {
        found = batch_read(batch, decoders, native) < 0 ? -1 : 1;
    }
    if (found > 0) {
        return batch_result(batch, decoders, failures, native);
    }
    return found == 0 ? slow() : NULL;
}

/* ------------------------------------------------------------------------------ tmpfs */

/* The last slot a batch found: its file's mapping serves the next slot in the same file (the
 * mappings are kept until leave(), and this lives no longer than the call). */
typedef struct {
    uint64_t loc; /* its location; 0: none yet */
    Slot slot;
} Near;

/* One slot's frame found for the batch, in place (slab_get's checks, without its copy):
 * 1, 0 SLOW. Its seal is kept, to be looked at again once the batch is read. */
static int
place_slot(Hot *self, Entry *entry, uint64_t loc, uint64_t key, Near *near)
{
    Slot slot = near->slot;
    uint64_t index = loc & (LOC_SLOTS - 1);
    if (near->loc == 0 || (loc ^ near->loc) >> LOC_FILE_SHIFT != 0) {
        if (open_slot(self, loc, &slot, 1) < 0) {
            return 0;
        }
        near->loc = loc;
        near->slot = slot;
    }
    else if (index >= slot.slots) {
        return 0;
    }
    slot.at = (SLAB_HEADER + index * slot.slot_size) / WORD;
    uint64_t seal = load(&slot.words[slot.at]);
    uint64_t length = seal & SEAL_LENGTH_MASK;
    if (seal == 0 || load(&slot.words[slot.at + 1]) != key || length < FRAME_HEADER
        || length + SLOT_HEADER > slot.slot_size) {
        return 0;
    }
    /* The length is a local, checked against the slot's size: whatever a writer does to the
     * slot meanwhile, every read of the frame stays inside the mapping (kept until leave()). */
    place_frame(entry, (const unsigned char *)&slot.words[slot.at] + SLOT_HEADER, (Py_ssize_t)length);
    entry->seal_word = &slot.words[slot.at];
    entry->seal = seal;
    entry->trusted = slot.trusted;
    return 1;
}

/* A large variable's frame copied into the batch, if the handle maps its file (large_get's
 * seqlock read): 1, 0 SLOW, -1 error. */
static int
copy_large(Hot *self, Batch *batch, Entry *entry, PyObject *index)
{
    PyObject *hot = mapped(self, index); /* held: an allocation below may drop the variable */
    if (hot == NULL) {
        if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_Exception)) {
            return -1;
        }
        PyErr_Clear();
        return 0;
    }
    Py_ssize_t capacity = PyLong_AsSsize_t(PyTuple_GET_ITEM(hot, 1));
    int trusted = capacity > 0 ? PyObject_IsTrue(PyTuple_GET_ITEM(hot, 2)) : -1;
    Py_buffer buffer;
    uint64_t *words = capacity > 0 && trusted >= 0
                          ? words_of(PyTuple_GET_ITEM(hot, 0), &buffer, VAR_HEADER + 2 * capacity)
                          : NULL;
    if (words == NULL) {
        Py_DECREF(hot);
        PyErr_Clear();
        return 0;
    }
    int result = 0;
    uint64_t control = load(&words[W_CONTROL]);
    uint64_t high = control >> 32;
    uint64_t slot = high & 1;
    uint64_t seq = high * 2;
    uint64_t length = load(&words[W_LENGTH + slot]);
    if ((control & LOW) == check_of(high) && !(high & RETIRED) && load(&words[W_SEQ + slot]) == seq
        && length >= FRAME_HEADER && length <= SMALL && length <= (uint64_t)capacity) {
        const unsigned char *frame = (const unsigned char *)words + VAR_HEADER + slot * capacity;
        if (copy_frame(batch, entry, frame, (Py_ssize_t)length) < 0) {
            result = -1;
        }
        else {
            __atomic_thread_fence(__ATOMIC_ACQUIRE); /* the copies before the sequence word */
            if (load(&words[W_SEQ + slot]) == seq) {
                entry->trusted = trusted;
                result = 1;
            }
        }
    }
    PyBuffer_Release(&buffer);
    Py_DECREF(hot);
    return result;
}

/* Every index's frame found (a slot's in place, a large variable's copied), checked (its
 * header and checksum) and read (entry_read), one index after the other while its bytes are
 * at hand, after a look at STATE and GENERATION (``generation``: what it was). Nothing that
 * runs code is decoded here. 1, 0 SLOW, -1 error. */
static int
tmpfs_read(Hot *self, Batch *batch, uint64_t *generation)
{
    uint64_t *meta = meta_words(self), *index = self->index_words;
    if (self->closing || meta == NULL || index == NULL || self->epoch != fork_epoch) {
        return 0;
    }
    uint64_t gen = self->index_gen;
    *generation = load(&meta[M_GENERATION]);
    if (load(&meta[M_STATE]) != 0 || load(&meta[M_RECOVERIES]) != self->recoveries
        || load(&meta[M_INDEX_GEN]) != gen) {
        return 0; /* DIRTY or destroyed, recovered, or another index: Python's way */
    }
    Py_ssize_t index_length = self->index_buffer.len;
    Near near = {0};
    HeadCrc kept = {0};
    for (Py_ssize_t i = 0; i < batch->count; i++) {
        /* What a call below ran (mapping a file, a collection's finalizers) may have closed the
         * handle or set another index: the kept mappings stay until leave(), and a new index
         * is taken only then. */
        if (self->closing) {
            return 0;
        }
        PyObject *object = PyTuple_GET_ITEM(batch->indexes, i);
        Entry *entry = &batch->entries[i];
        uint64_t key = (uint64_t)entry->key, word = 0;
        uint64_t loc = find(index, index_length, key, &word);
        int found = 1;
        if (loc == ~0ULL) {
            return 0; /* damage: Python says so */
        }
        if (loc <= LOC_TOMB) {
            entry->at = ABSENT_AT; /* absent, if the generation holds till the end */
        }
        else if (loc == LOC_LARGE) {
            batch->used = 0; /* the last copy is read: its room serves this one */
            found = copy_large(self, batch, entry, object);
            if (found > 0) {
                entry->payload = batch->scratch + entry->at;
            }
        }
        else {
            found = place_slot(self, entry, loc, key, &near);
        }
        if (found <= 0) {
            return found;
        }
        if (entry->at != ABSENT_AT
            && (!frame_fits(entry, self->first_word, self->decoders, self->executes)
                || entry->head[2] != checksum(head_crc(&kept, entry->head),
                                              (const unsigned char *)entry->payload,
                                              (size_t)entry->length))) {
            return 0; /* damage, a signature, an untrusted writer, or a writer meanwhile */
        }
        if (entry_read(batch, i, self->decoders, NULL) < 0) {
            return -1;
        }
    }
    return 1;
}

/* Whether no write landed since tmpfs_read's look: STATE clear and GENERATION as it was then,
 * every slot read in place still sealed as it was, the handle open. Every read of the batch
 * (checksums, unpickling in place, pending copies) comes before this. */
static int
tmpfs_unchanged(Hot *self, const Batch *batch, uint64_t generation)
{
    uint64_t *meta = meta_words(self);
    __atomic_thread_fence(__ATOMIC_ACQUIRE); /* every read of the batch before these loads */
    if (self->closing || meta == NULL || load(&meta[M_STATE]) != 0
        || load(&meta[M_GENERATION]) != generation || load(&meta[M_RECOVERIES]) != self->recoveries
        || load(&meta[M_INDEX_GEN]) != self->index_gen) {
        return 0; /* a write landed meanwhile, or the handle was closed */
    }
    for (Py_ssize_t i = 0; i < batch->count; i++) {
        const Entry *entry = &batch->entries[i];
        if (entry->at == IN_PLACE && load(entry->seal_word) != entry->seal) {
            return 0;
        }
    }
    return 1;
}

/* The batch, read without a lock and without copying a slot's frame: found, checked and
 * unpickled where it lies, then kept only if tmpfs_unchanged finds that no write landed since
 * the first look (a seqlock's read side over the whole segment); a payload for a decoder that
 * runs code is copied, and decoded only after that. */
static PyObject *
tmpfs_get_many(Hot *self, PyObject *indexes)
{
    Batch batch;
    int found = batch_open(&batch, indexes);
    uint64_t generation = 0;
    if (found > 0) {
        found = tmpfs_read(self, &batch, &generation);
    }
    if (found > 0) {
        found = tmpfs_unchanged(self, &batch, generation);
    }
    PyObject *result = NULL;
    if (found > 0) {
        result = batch_result(&batch, self->decoders, self->failures, NULL);
    }
    else if (found == 0) {
        result = slow();
    }
    batch_close(&batch);
    return result;
}

const char hot_get_many_doc[] =
"get_many(indexes) -> {index: value}, or SLOW\n\n"
"The values of those ``indexes`` (a list or tuple of ints) that hold one, read without a lock\n"
"between two looks at the segment's STATE and GENERATION words (no write landed meanwhile),\n"
"in the order asked; SLOW, having decoded nothing, for anything the single get would not do.";

PyObject *
hot_get_many(Hot *self, PyObject *indexes)
{
    enter(self); /* what the call reads stays mapped until it leaves (maps.c) */
    PyObject *result = tmpfs_get_many(self, indexes);
    leave(self);
    return result;
}

/* ------------------------------------------------------------------------------- sysv */

/* Every index's bytes copied under one hold of the lock: 1, 0 SLOW, -1 error. */
static int
sysv_copy(SysvHot *self, Batch *batch)
{
    /* The chain index's offsets first: catching one up stores into its dict, which may run a
     * collection's finalizers, and no Python code may run once the semaphore is ours. */
    for (Py_ssize_t i = 0; i < batch->count; i++) {
        Py_ssize_t pos = sysv_remembered(self, PyTuple_GET_ITEM(batch->indexes, i), 1);
        if (pos < 0) {
            return 0; /* absent, or not remembered: Python walks the chain */
        }
        batch->entries[i].at = pos; /* the chunk's offset, until it is copied */
    }
    if (self->words == NULL || self->epoch != fork_epoch) {
        return 0; /* closed, or forked, meanwhile */
    }
    Held held;
    int taken = sysv_lock_now(self, &held, 1); /* no Python code runs under it */
    if (taken <= 0) {
        return taken;
    }
    int result = 1;
    int64_t end = sysv_checked_end(self);
    for (Py_ssize_t i = 0; i < batch->count && result == 1; i++) {
        Entry *entry = &batch->entries[i];
        int64_t key = entry->key;
        int64_t length, step;
        if (end < 0 || !sysv_proved(self, key, entry->at, end, &length, &step)) {
            result = 0;
            break;
        }
        const char *bytes = (const char *)self->words + entry->at + PHP_CHUNK_HEADER;
        entry->framed = length >= FRAME_HEADER && memcmp(bytes, "\x93SHF", 4) == 0;
        if (entry->framed ? length - FRAME_HEADER > SMALL : self->native == NULL) {
            result = 0;
            break;
        }
        entry->trusted = self->trusted;
        if (entry->framed) {
            if (copy_frame(batch, entry, (const unsigned char *)bytes, (Py_ssize_t)length) < 0) {
                result = -1;
            }
            continue;
        }
        char *into = batch_room(batch, (Py_ssize_t)length); /* PHP's bare bytes */
        if (into == NULL) {
            result = -1;
            break;
        }
        memcpy(into, bytes, (size_t)length);
        entry->at = batch->used;
        entry->length = (Py_ssize_t)length;
        batch->used += entry->length;
    }
    if (sysv_unlock(self, &held) < 0) {
        return -1;
    }
    return result;
}

static PyObject *
sysv_batch(SysvHot *self, PyObject *indexes)
{
    if (self->words == NULL || self->epoch != fork_epoch) {
        return slow();
    }
    Batch batch;
    int opened = batch_open(&batch, indexes);
    if (opened <= 0) {
        batch_close(&batch);
        return opened < 0 ? NULL : slow();
    }
    PyObject *result = batch_finish(&batch, sysv_copy(self, &batch), self->first_word,
                                    self->decoders, self->failures, self->executes, self->native);
    batch_close(&batch);
    return result;
}

const char sysv_get_many_doc[] =
"get_many(indexes) -> {index: value}, or SLOW\n\n"
"The values of ``indexes`` (a list or tuple of ints), every one remembered by the chain index,\n"
"copied under one hold of PHP's lock taken without waiting (or already this thread's) and\n"
"decoded after it; SLOW, having decoded nothing, for anything the single get would not do.";

PyObject *
sysv_get_many(SysvHot *self, PyObject *indexes)
{
    /* The tables and the native decoder are the type's until it is collected; held anyway
     * across the decoding, which runs code. */
    Py_INCREF(self);
    PyObject *result = sysv_batch(self, indexes);
    Py_DECREF(self);
    return result;
}

/* ----------------------------------------------------------- frames read elsewhere (redis) */

/* shmfs._hot.Frames: a batch of frames that came in one reply (the redis backend's READ_MANY
 * script, shmfs/packed.py: each index's length, 4 bytes little-endian, 0xFFFFFFFF for none,
 * then the frames in order), checked and decoded as Hot's get_many checks and decodes its own. */
typedef struct {
    PyObject_HEAD
    PyObject *decoders[256];
    PyObject *failures[256];
    char executes[256];
    uint64_t first_word;
} Frames;

#define ABSENT 0xFFFFFFFFU

/* Every frame of ``reply`` found for the batch, read where it is (the reply is held, and
 * bytes never change): 1, 0 SLOW (a malformed reply, a frame too short or too long for here). */
static int
frames_place(Batch *batch, const unsigned char *reply, Py_ssize_t size, int trusted)
{
    if (batch->count > size / 4) {
        return 0;
    }
    Py_ssize_t at = 4 * batch->count;
    for (Py_ssize_t i = 0; i < batch->count; i++) {
        Entry *entry = &batch->entries[i];
        uint32_t length;
        memcpy(&length, reply + 4 * i, 4); /* little-endian, checked in hot.h */
        if (length == ABSENT) {
            entry->at = ABSENT_AT;
            continue;
        }
        if (length < FRAME_HEADER || length > SMALL || (Py_ssize_t)length > size - at) {
            return 0;
        }
        place_frame(entry, reply + at, (Py_ssize_t)length);
        entry->trusted = trusted;
        at += length;
    }
    return at == size;
}

PyDoc_STRVAR(frames_decode_doc,
"decode(indexes, reply, trusted) -> {index: value}, or SLOW\n\n"
"The values of the frames in ``reply`` (one per index of the list or tuple ``indexes``: their\n"
"lengths, 4 bytes little-endian each, 0xFFFFFFFF for none, then the frames), checked as a get checks\n"
"a frame (a pickling codec's only if ``trusted``); SLOW, having decoded nothing, for anything\n"
"else (a malformed reply, a signed or damaged frame, a bare value).");

static PyObject *
frames_decode(Frames *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyBytes_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "decode(indexes, reply: bytes, trusted)");
        return NULL;
    }
    int trusted = PyObject_IsTrue(args[2]);
    if (trusted < 0) {
        return NULL;
    }
    Batch batch;
    int opened = batch_open(&batch, args[0]);
    if (opened <= 0) {
        batch_close(&batch);
        return opened < 0 ? NULL : slow();
    }
    PyObject *reply = Py_NewRef(args[1]); /* read in place until the end */
    int found = frames_place(&batch, (const unsigned char *)PyBytes_AS_STRING(reply),
                             PyBytes_GET_SIZE(reply), trusted);
    Py_INCREF(self); /* its tables, across the decoders' code */
    PyObject *result = batch_finish(&batch, found, self->first_word, self->decoders,
                                    self->failures, self->executes, NULL);
    Py_DECREF(self);
    batch_close(&batch);
    Py_DECREF(reply);
    return result;
}

static int
frames_init(Frames *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"decoders", "first_word", NULL};
    PyObject *decoders;
    unsigned long long first_word;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!K", names, &PyDict_Type, &decoders,
                                     &first_word)) {
        return -1;
    }
    if (first_word & (0xFFULL << CODEC_SHIFT)) {
        PyErr_SetString(PyExc_ValueError, "first_word must have its codec byte zero");
        return -1;
    }
    if (take_decoders(decoders, self->decoders, self->failures, self->executes) < 0) {
        return -1;
    }
    self->first_word = first_word;
    return 0;
}

static int
frames_traverse(Frames *self, visitproc visit, void *arg)
{
    for (int i = 0; i < 256; i++) {
        Py_VISIT(self->decoders[i]);
        Py_VISIT(self->failures[i]);
    }
    return 0;
}

static int
frames_clear(Frames *self)
{
    for (int i = 0; i < 256; i++) {
        Py_CLEAR(self->decoders[i]);
        Py_CLEAR(self->failures[i]);
    }
    return 0;
}

static void
frames_dealloc(Frames *self)
{
    PyObject_GC_UnTrack(self);
    frames_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef frames_methods[] = {
    {"decode", (PyCFunction)(void (*)(void))frames_decode, METH_FASTCALL, frames_decode_doc},
    {NULL, NULL, 0, NULL},
};

PyTypeObject FramesType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmfs._hot.Frames",
    .tp_basicsize = sizeof(Frames),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Frames(decoders, first_word)\n\nA batch of frames from one reply, checked and "
              "decoded (see shmfs/hotpath.py).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)frames_init,
    .tp_dealloc = (destructor)frames_dealloc,
    .tp_traverse = (traverseproc)frames_traverse,
    .tp_clear = (inquiry)frames_clear,
    .tp_methods = frames_methods,
};
