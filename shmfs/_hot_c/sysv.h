/*
 * shmfs._hot.SysvHot: the sysv backend's common locked get and put in one call (sysv.c). Its
 * numbers are shmfs/backends/sysv/'s: layout.py (PHP's header and chunks) and journal.py (the
 * journal past PHP's area); tests/test_sysv_hot.py holds them equal.
 */
#ifndef SHMFS_SYSV_H
#define SHMFS_SYSV_H

#include "hot.h"

/* layout.py: PHP's header words, and a chunk's */
#define PHP_HEADER 40
#define PHP_CHUNK_HEADER 24
#define PHP_MIN_CHUNK 32
#define H_START 1
#define H_END 2
#define H_FREE 3
#define H_TOTAL 4

/* journal.py: its words (from its first), its buffer, and the stamp's checksum edges */
#define J_MAGIC 0x324E4A53464D4853ULL /* b"SHMFSJN2", little-endian */
#define J_SEED 1
#define J_STATE 2
#define J_A_END 3
#define J_A_FREE 4
#define J_A_NEED 5
#define J_C_POS 6
#define J_C_OLD 7
#define J_C_END 8
#define J_C_FREE 9
#define J_DONE 10
#define J_SAVED 11
#define J_BUFFER 128
#define J_CAPACITY 3840
#define J_DIRECT 128 /* journal._DIRECT: chunks cut in steps of their own size */
#define J_IDLE 0
#define J_APPEND 1
#define J_CUT 2
#define STAMP_EDGE 2048

/* chain_index.py: the move log's length (_max_moves) and the copy's limit */
#define MOVES_BASE 16
#define MOVES_PER 16
#define MOVES_CAP 64
#define MAX_AVERAGE_CHUNK 2048

extern PyTypeObject SysvHotType;

typedef struct {
    PyObject_HEAD
    Py_buffer buffer;      /* an export of the segment's memoryview: pinned while held */
    int64_t *words;        /* NULL: closed */
    Py_ssize_t size;       /* the segment's bytes (the kernel's size) */
    int semid;
    PyObject *lock;        /* the backend's lock's LockInterface (locking.py): its thread
                            * lock's acquire and release, and its state words */
    PyObject *acquire;     /* the interface's acquire and release */
    PyObject *release;
    Py_ssize_t journal;    /* the journal's first byte, or -1: none (a segment PHP made) */
    uint64_t seed;         /* the stamps' key */
    int trusted;           /* whether only trusted users can write the segment */
    PyObject *where;       /* ChainIndex.hot_state(): index -> (offset, moves seen) */
    PyObject *moves;       /* [(offset, size)] */
    PyObject *copy;        /* bytearray: [0, end) as the last walk and our writes since left
                            * it (ChainIndex._patch); empty: none */
    PyObject *stored;      /* ChainIndex.stored, bound */
    PyObject *native;      /* the native codec's decode (PHP's unserialize), or NULL */
    PyObject *decoders[256];
    PyObject *failures[256];  /* codec id -> the error a get raises for its decoder's */
    char executes[256];
    uint64_t first_word;   /* a frame's first word with the codec byte zero */
    uint64_t epoch;
} SysvHot;

static inline int64_t
get_word(const int64_t *words, Py_ssize_t at)
{
    return __atomic_load_n(&words[at], __ATOMIC_ACQUIRE);
}

static inline void
set_word(int64_t *words, Py_ssize_t at, int64_t value)
{
    __atomic_store_n(&words[at], value, __ATOMIC_RELEASE);
}

/* The lock as one call holds it: the lock's interface, its thread lock's release and an export
 * of its state words, held by the call itself (a finalizer may close or reset the handle
 * meanwhile), and how it was had. */
typedef struct {
    PyObject *lock;
    PyObject *release;
    PyObject *settle;      /* LockInterface.settle: a close put off until this release */
    Py_buffer buffer;
    int64_t *lock_words;
    int taken;
} Held;

/* sysv.c: the stamp (journal.stamp), the lock, the checked header, the chain index's offsets */
uint64_t sysv_stamp(uint64_t seed, uint64_t index, uint64_t step, const unsigned char *data,
                    size_t length);
int sysv_lock_now(SysvHot *self, Held *held, int quiet);
int sysv_unlock(SysvHot *self, Held *held);
int64_t sysv_checked_end(SysvHot *self);
PyObject *sysv_pair(long long a, long long b);
Py_ssize_t sysv_remembered(SysvHot *self, PyObject *index, int keep);
int sysv_proved(SysvHot *self, int64_t key, Py_ssize_t pos, int64_t end, int64_t *length,
                int64_t *step);

/* batch.c: the batch read */
PyObject *sysv_get_many(SysvHot *self, PyObject *indexes);
extern const char sysv_get_many_doc[];

/* sysv_put.c */
PyObject *sysv_put(SysvHot *self, PyObject *const *args, Py_ssize_t nargs);
extern const char sysv_put_doc[];

#endif
