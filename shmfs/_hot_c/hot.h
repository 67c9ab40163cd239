/*
 * What the parts of shmfs._hot share: the layouts they read (layout.h, largefile.py, frame.py),
 * the module's globals, and each part's entry points. See module.c for what the module is for.
 */
#ifndef SHMFS_HOT_H
#define SHMFS_HOT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>

#if defined(Py_GIL_DISABLED)
#error "shmfs._hot relies on the GIL; the pure-Python path serves free-threaded builds"
#endif
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "shmfs's files are little-endian; the pure-Python path serves big-endian machines"
#endif

/* A large variable's own file (backends/tmpfs/largefile.py). */
#define VAR_HEADER 64
#define W_CONTROL 3ULL
#define W_SEQ 4
#define W_LENGTH 6
#define RETIRED 0x80000000ULL
#define GENERATIONS 0x7FFFFFFFULL
#define LOW 0xFFFFFFFFULL
#define CHECK_MULTIPLIER 0x9E3779B1ULL
#define CHECK_MASK 0x5BD1E995ULL

/* The segment's metadata page, the index and the slabs: generated from layout.py. */
#include "layout.h"

/* The frame (codecs.py): magic, version, codec, flags, reserved; length; crc32, reserved. */
#define FRAME_HEADER 24
#define CODEC_SHIFT 40
/* Frames above this go the Python way: large values are read in pieces or into a reused buffer
 * there, and their checksum covers only their ends (codecs.FULL_CHECK_LIMIT); all but one
 * bytes value, which hot.c reads as frame.py's Split. */
#define SMALL (64 * 1024)
/* frame.py's FULL_CHECK_LIMIT and _EDGE: a payload longer than the first is checked over its
 * first and last EDGE bytes; tests/test_layout.py holds them equal. */
#define FULL_CHECK_LIMIT (64 * 1024)
#define CHECK_EDGE 4096

/* The segment lock's state words (locking.py's LockInterface.words: DEPTH, FD, FLAGS), signed
 * 64-bit; tests/test_layout.py holds these equal to locking.py's. */
#define LOCK_DEPTH 0
#define LOCK_FD 1
#define LOCK_FLAGS 2
#define LOCK_WORDS 3

/* module.c: bumped in every forked child, so handles see that they must reopen what they share;
 * "do it the Python way"; pickle.dumps and the protocol shmfs writes (codecs._PROTOCOL); the
 * attribute name of a mapped file's state (largevars.py, slabs.py). */
extern uint64_t fork_epoch;
extern PyObject *SLOW;
extern PyObject *pickle_dumps;
extern PyObject *pickle_loads;
extern PyObject *protocol;
extern PyObject *str_hot;

/* checksum.c */
void crc_init(void);
uint32_t checksum(uint32_t crc, const unsigned char *bytes, size_t length);
/* each data[i]'s checksum continued from crc[i], into crc[i] */
void checksum_many(Py_ssize_t count, const unsigned char *const *data, const size_t *length,
                   uint32_t *crc);
PyObject *hot_crc32(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
extern const char crc32_doc[];

/* unpickle.c: a plain value's pickle read without pickle.loads; NULL when declined (an
 * exception may be set: the caller decides what to do with it) */
PyObject *plain_loads(const char *data, Py_ssize_t length);
PyObject *hot_plain_loads(PyObject *module, PyObject *data);
extern const char plain_loads_doc[];

/* keyhash.c */
int keyhash_init(void);
PyObject *hot_key_slot(PyObject *module, PyObject *key);
extern const char key_slot_doc[];
extern PyTypeObject KeySlotsType;
/* ``slots`` must be a KeySlots: (text, index) of ``key``, or NULL with an exception set. */
PyObject *keyslots_slot_of(PyObject *slots, PyObject *key);

/* cachehits.c */
extern PyTypeObject CacheHitsType;

/* cacheset.c */
extern PyTypeObject CacheSetsType;
PyObject *hot_tuple_head(PyObject *module, PyObject *text);
extern const char tuple_head_doc[];
/* resp.c */
PyObject *hot_resp_many(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
extern const char resp_many_doc[];
PyObject *hot_resp_hmget(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
extern const char resp_hmget_doc[];

/* plain.c */
int plain(PyObject *value, int depth, Py_ssize_t *budget);
PyObject *plain_dumps(PyObject *value);

/* maps.c: one slab file's mapping, as a Hot keeps it between calls */
typedef struct {
    Py_buffer buffer;   /* an export of the mapping: it stays mapped while held */
    uint64_t *words;    /* NULL: not kept */
    uint64_t slot_size;
    uint64_t slots;
    int trusted;
    int writable;
} SlabMap;

/* One slot, found: where its words are (in a mapping the Hot keeps) and its file's traits. */
typedef struct {
    uint64_t *words;
    uint64_t at;        /* the slot's first word */
    uint64_t slot_size;
    uint64_t slots;     /* its file's */
    int trusted;
    int writable;
} Slot;

/* hot.c: the Hot type, and what its get and put share */
typedef struct {
    PyObject_HEAD
    PyObject *vars;    /* the backend's dict: index -> VarFile, for large variables */
    PyObject *slabs;   /* the backend's dict: class << 16 | file -> SlabFile */
    uint64_t index_gen; /* the generation the metadata names the kept index by (maps.c) */
    PyObject *meta;    /* the metadata page, a memoryview */
    PyObject *lock;    /* the segment lock's LockInterface (locking.py): acquire, release, words */
    PyObject *acquire; /* its thread lock's acquire and release, bound */
    PyObject *release;
    PyObject *settle;  /* runs a close left for the holder's release (LockInterface.settle) */
    Py_buffer lock_buffer;    /* an export of its state words, held while the Hot keeps it */
    int64_t *lock_words;      /* NULL: no lock yet, or let go */
    PyObject *decoders[256];  /* codec id -> decode callable, or NULL */
    PyObject *failures[256];  /* codec id -> the error a get raises for its decoder's (codecs.py) */
    char executes[256];       /* codec id -> whether decoding runs code (pickle) */
    uint64_t first_word;      /* a frame's first word with the codec byte zeroed */
    uint64_t recoveries;      /* the RECOVERIES count the backend's mappings belong to */
    uint64_t dirty_tag;       /* DIRTY | pid << 32 */
    uint64_t epoch;
    /* maps.c: the mappings kept between calls, and when they may be let go */
    Py_buffer meta_buffer;
    uint64_t *meta_words;
    Py_buffer index_buffer;
    uint64_t *index_words;
    PyObject *pending_index;  /* an index set while a call ran, taken when none does */
    uint64_t pending_gen;
    SlabMap *maps[NCLASSES];
    Py_ssize_t map_count[NCLASSES];
    int busy;                 /* calls running (a finalizer may start one inside another) */
    int closing;
} Hot;

extern PyTypeObject HotType;
uint64_t *words_of(PyObject *view, Py_buffer *buffer, Py_ssize_t need);
PyObject *mapped(Hot *self, PyObject *index);
PyObject *slow(void);
void drop_handle(Hot *self);

/* maps.c */
void enter(Hot *self);
void leave(Hot *self);
void let_go(Hot *self);
void set_index(Hot *self, PyObject *words, uint64_t gen);
uint64_t *meta_words(Hot *self);
/* A slot's mapping, kept; ``may_map``: ask the handle for a file not kept yet, which runs
 * Python code (never with the segment lock held: that code could write the segment). */
int open_slot(Hot *self, uint64_t loc, Slot *slot, int may_map);

/* slab.c: the index lookup, and the get and put of a variable in a slot */
uint64_t find(const uint64_t *index, Py_ssize_t length, uint64_t key, uint64_t *word);
/* Start loading ``key``'s first bucket, so the miss overlaps work before find() (a put's
 * pickling); nothing if the index's size disagrees with its header. */
void prefetch_bucket(const uint64_t *index, Py_ssize_t length, uint64_t key);
PyObject *slab_get(Hot *self, const uint64_t *meta, uint64_t loc, uint64_t key, uint64_t gen);
PyObject *slab_put(Hot *self, PyObject *index, long codec, PyObject *pickled, Py_ssize_t same_from,
                   Py_ssize_t same_to, int or_absent);
/* hot.c: a decoder's failure raised as Python's get raises it (``failed``: the codec's entry
 * of codecs.decode_error); NULL, always */
PyObject *decode_failed_as(PyObject *failed);
/* hot.c: ``payload`` (stolen) decoded by ``decode``, a plain value's pickle by unpickle.c
 * first; a decoder's failure raised as ``failed`` makes it, or SLOW when ``failed`` is NULL */
PyObject *decode_with(PyObject *decode, PyObject *failed, PyObject *payload);
/* hot.c: what Hot and SysvHot share: their codec tables, and their lock's interface checked */
int take_decoders(PyObject *decoders, PyObject *decode[256], PyObject *failures[256], char executes[256]);
int lock_interface_words(PyObject *lock, Py_buffer *buffer);
PyObject *decode_frame(Hot *self, const uint64_t head[3], PyObject *payload, int trusted);
PyObject *hot_rehash(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
extern const char rehash_doc[];

/* put.c: the segment lock's thread half, taken without waiting (1: at depth 0, so the flock
 * is ours to take; 2: re-entrantly; 0: another thread has it, or the lock is closed or
 * inherited across a fork; -1: an exception), and given back; the flock taken without waiting
 * (0: had) */
int thread_lock(Hot *self);
int thread_unlock(Hot *self);
int file_lock(Hot *self);
/* put.c: the counts stored after a change, DIRTY cleared; and the lock given back as taken
 * (and, if it was closed meanwhile, the close it put off run: LockInterface.settle) */
void changed(uint64_t *meta, uint64_t used);
PyObject *unlock(Hot *self, int taken, PyObject *result);

/* batch.c: the batch read */
PyObject *hot_get_many(Hot *self, PyObject *indexes);
extern const char hot_get_many_doc[];
extern PyTypeObject FramesType;

/* put.c */
PyObject *hot_put(Hot *self, PyObject *const *args, Py_ssize_t nargs);
extern const char hot_put_doc[];

/* mapping.c */
extern PyTypeObject MappingType;

/* getattr(owner, name) (a new reference, or NULL with an exception set): for a module, its
 * dict looked up directly, which is what getattr does for a name the module has, in a third
 * of the instructions (the Cache's clock, looked up on every call: tests replace it). */
static inline PyObject *
module_attribute(PyObject *owner, PyObject *name)
{
    if (PyModule_CheckExact(owner)) {
        PyObject *found = PyDict_GetItemWithError(PyModule_GetDict(owner), name);
        if (found != NULL) {
            return Py_NewRef(found);
        }
        if (PyErr_Occurred()) {
            return NULL;
        }
    }
    return PyObject_GetAttr(owner, name);
}

static inline uint64_t
load(const uint64_t *word)
{
    return __atomic_load_n(word, __ATOMIC_ACQUIRE);
}

static inline void
store(uint64_t *word, uint64_t value)
{
    __atomic_store_n(word, value, __ATOMIC_RELEASE);
}

static inline uint64_t
check_of(uint64_t high)
{
    return ((high * CHECK_MULTIPLIER) & LOW) ^ CHECK_MASK;
}

#endif
