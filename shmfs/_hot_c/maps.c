/* shmfs._hot: what a Hot keeps of its handle's mappings between calls, and when it lets go.
 *
 * Why. Reaching a mapping through Python (a dict lookup, an attribute, a tuple, a buffer request)
 * costs a get more than the copy and the checks together. So a Hot asks once and keeps, for the
 * metadata page, the current index and each slab file, a buffer export of the mapping (while it
 * is exported, neither mmap nor Mapping can be closed, so the memory stays mapped) and the
 * numbers it needs. Slab files are never replaced or shrunk while a segment lives, so what is
 * kept stays true; the index is replaced by its generation, which every call checks.
 *
 * When to let go. A call runs code that can close the handle (a collection's finalizers, at any
 * allocation). So every call brackets itself with enter/leave, and close (or a new index) only
 * marks what it drops while a call is running; the outermost leave lets it go.
 */
#include "hot.h"

#include <string.h>

void
enter(Hot *self)
{
    self->busy++;
}

static void
release_index(Hot *self)
{
    if (self->index_words != NULL) {
        PyBuffer_Release(&self->index_buffer);
        self->index_words = NULL;
    }
}

static void
release_all(Hot *self)
{
    release_index(self);
    if (self->meta_words != NULL) {
        PyBuffer_Release(&self->meta_buffer);
        self->meta_words = NULL;
    }
    for (int number = 0; number < (int)NCLASSES; number++) {
        for (Py_ssize_t file = 0; file < self->map_count[number]; file++) {
            if (self->maps[number][file].words != NULL) {
                PyBuffer_Release(&self->maps[number][file].buffer);
            }
        }
        PyMem_Free(self->maps[number]);
        self->maps[number] = NULL;
        self->map_count[number] = 0;
    }
}

/* Take the index the handle set while a call was running, now that none is. */
static void
take_pending_index(Hot *self)
{
    PyObject *pending = self->pending_index;
    if (pending == NULL) {
        return;
    }
    self->pending_index = NULL;
    release_index(self);
    if (!self->closing) {
        self->index_words = words_of(pending, &self->index_buffer, 0);
        self->index_gen = self->pending_gen;
    }
    Py_DECREF(pending);
}

void
leave(Hot *self)
{
    if (--self->busy > 0) {
        return;
    }
    take_pending_index(self);
    if (self->closing) {
        release_all(self);
        drop_handle(self);
    }
}

void
let_go(Hot *self)
{
    self->closing = 1;
    if (self->busy == 0) {
        Py_CLEAR(self->pending_index);
        release_all(self);
        drop_handle(self);
    }
}

void
set_index(Hot *self, PyObject *words, uint64_t gen)
{
    Py_XSETREF(self->pending_index, Py_NewRef(words));
    self->pending_gen = gen;
    if (self->busy == 0) {
        take_pending_index(self);
    }
}

uint64_t *
meta_words(Hot *self)
{
    if (self->meta_words == NULL && !self->closing && self->meta != NULL) {
        self->meta_words = words_of(self->meta, &self->meta_buffer, (Py_ssize_t)PAGE);
    }
    return self->meta_words;
}

/* Ask the handle's slab dict for a file's mapping and keep it; NULL if the handle has none. */
static SlabMap *
map_slab(Hot *self, uint64_t number, uint64_t file)
{
    if (self->slabs == NULL || file > (uint64_t)PY_SSIZE_T_MAX / 2) {
        return NULL;
    }
    if ((Py_ssize_t)file >= self->map_count[number]) {
        Py_ssize_t count = (Py_ssize_t)file + 8;
        SlabMap *grown = PyMem_Realloc(self->maps[number], (size_t)count * sizeof(SlabMap));
        if (grown == NULL) {
            return NULL;
        }
        memset(grown + self->map_count[number], 0,
               (size_t)(count - self->map_count[number]) * sizeof(SlabMap));
        self->maps[number] = grown;
        self->map_count[number] = count;
    }
    PyObject *slabs = Py_NewRef(self->slabs); /* the lookups below allocate */
    PyObject *name = PyLong_FromUnsignedLongLong(number << 16 | file);
    PyObject *var = name != NULL ? PyDict_GetItemWithError(slabs, name) : NULL;
    Py_XDECREF(name);
    PyObject *hot = NULL;
    if (var != NULL) {
        Py_INCREF(var);
        hot = PyObject_GetAttr(var, str_hot);
        Py_DECREF(var);
    }
    Py_DECREF(slabs);
    SlabMap found = {0};
    if (hot == NULL || !PyTuple_CheckExact(hot) || PyTuple_GET_SIZE(hot) != 5) {
        goto fail;
    }
    Py_ssize_t size = PyLong_AsSsize_t(PyTuple_GET_ITEM(hot, 1));
    Py_ssize_t slots = size != -1 ? PyLong_AsSsize_t(PyTuple_GET_ITEM(hot, 2)) : -1;
    if (size != (Py_ssize_t)CLASSES[number] || slots <= 0) {
        goto fail; /* before any other call: no Python call with an exception pending */
    }
    found.trusted = PyObject_IsTrue(PyTuple_GET_ITEM(hot, 3));
    found.writable = found.trusted >= 0 ? PyObject_IsTrue(PyTuple_GET_ITEM(hot, 4)) : -1;
    if (size != (Py_ssize_t)CLASSES[number] || slots <= 0 || found.trusted < 0
        || found.writable < 0 || self->closing) {
        goto fail;
    }
    found.words = words_of(PyTuple_GET_ITEM(hot, 0), &found.buffer,
                           (Py_ssize_t)(SLAB_HEADER + (uint64_t)slots * (uint64_t)size));
    if (found.words == NULL) {
        goto fail;
    }
    found.slot_size = (uint64_t)size;
    found.slots = (uint64_t)slots;
    Py_DECREF(hot);
    /* A collection during the lookups may have let go of everything: keep nothing then. */
    if (self->closing || (Py_ssize_t)file >= self->map_count[number]) {
        PyBuffer_Release(&found.buffer);
        return NULL;
    }
    self->maps[number][file] = found;
    return &self->maps[number][file];
fail:
    Py_XDECREF(hot);
    PyErr_Clear();
    return NULL;
}

int
open_slot(Hot *self, uint64_t loc, Slot *slot, int may_map)
{
    uint64_t number = (loc >> LOC_CLASS_SHIFT) - 1;
    uint64_t file = (loc >> LOC_FILE_SHIFT) & (LOC_FILES - 1);
    uint64_t index = loc & (LOC_SLOTS - 1);
    if (number >= NCLASSES || self->closing) {
        return -1;
    }
    SlabMap *map = (Py_ssize_t)file < self->map_count[number] ? &self->maps[number][file] : NULL;
    if ((map == NULL || map->words == NULL) && may_map) {
        map = map_slab(self, number, file);
    }
    if (map == NULL || map->words == NULL || index >= map->slots) {
        return -1;
    }
    slot->words = map->words;
    slot->slot_size = map->slot_size;
    slot->slots = map->slots;
    slot->trusted = map->trusted;
    slot->writable = map->writable;
    slot->at = (SLAB_HEADER + index * map->slot_size) / WORD;
    return 0;
}
