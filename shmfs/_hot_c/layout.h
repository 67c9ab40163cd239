/* The tmpfs format's numbers, generated from shmfs/backends/tmpfs/layout.py by setup.py
 * (python setup.py build_ext --inplace). Do not edit; tests/test_layout.py checks it. */
#ifndef SHMFS_LAYOUT_H
#define SHMFS_LAYOUT_H

#define PAGE 4096ULL
#define WORD 8ULL
#define MASK64 18446744073709551615ULL
#define META_MAGIC 5135602567212779603ULL
#define META_VERSION 3ULL
#define M_MAGIC 0ULL
#define M_VERSION 1ULL
#define M_KEY 2ULL
#define M_SIZE 3ULL
#define M_PERM 4ULL
#define M_STATE 5ULL
#define M_USED 6ULL
#define M_COUNT 7ULL
#define M_CREATED 8ULL
#define M_CREATOR 9ULL
#define M_GENERATION 10ULL
#define M_WAITERS 11ULL
#define M_RECOVERIES 12ULL
#define M_VIEWS 13ULL
#define M_INDEX_GEN 14ULL
#define M_STAMP 15ULL
#define M_WAITER_TABLE 16ULL
#define M_WAITER_SLOTS 64ULL
#define M_CLASSES 80ULL
#define M_WORDS 512ULL
#define STATE_DESTROYED 1ULL
#define STATE_DIRTY 2ULL
#define IX_MAGIC 6360289195764566099ULL
#define IX_VERSION 1ULL
#define IX_W_MAGIC 0ULL
#define IX_W_VERSION 1ULL
#define IX_W_SHIFT 2ULL
#define IX_W_FILLED 3ULL
#define IX_W_GEN 4ULL
#define IX_HEADER_WORDS 8ULL
#define IX_MIN_SHIFT 6ULL
#define IX_MAX_SHIFT 40ULL
#define IX_FILL_NUM 3ULL
#define IX_FILL_DEN 4ULL
#define FIB 11400714819323198485ULL
#define LOC_EMPTY 0ULL
#define LOC_TOMB 1ULL
#define LOC_LARGE 2ULL
#define LOC_CLASS_SHIFT 48ULL
#define LOC_FILE_SHIFT 32ULL
#define LOC_FILES 65536ULL
#define LOC_SLOTS 4294967296ULL
#define SLAB_MAGIC 4774181000534902867ULL
#define SLAB_VERSION 1ULL
#define SLAB_HEADER 64ULL
#define SLAB_W_MAGIC 0ULL
#define SLAB_W_VERSION 1ULL
#define SLAB_W_CLASS 2ULL
#define SLAB_W_FILE 3ULL
#define SLAB_MAX 2097152ULL
#define SLOT_HEADER 16ULL
#define SEAL_LENGTH_BITS 16ULL
#define SEAL_LENGTH_MASK 65535ULL
#define SLOT_MAX 4096ULL
#define NCLASSES 47ULL
static const unsigned CLASSES[47] = {
    32,
    48,
    64,
    80,
    96,
    112,
    128,
    144,
    160,
    176,
    192,
    208,
    224,
    240,
    256,
    288,
    320,
    352,
    384,
    416,
    448,
    480,
    512,
    576,
    640,
    704,
    768,
    832,
    896,
    960,
    1024,
    1152,
    1280,
    1408,
    1536,
    1664,
    1792,
    1920,
    2048,
    2304,
    2560,
    2816,
    3072,
    3328,
    3584,
    3840,
    4096,
};

#endif
