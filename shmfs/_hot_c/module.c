/*
 * shmfs._hot: the tmpfs get and put of a small value, in C.
 *
 * Why it exists. A get in Python is a dozen interpreter-level steps (the handle's checks, the
 * seqlock, the frame's header and checksum, the unpickle) and costs about 1.5 us, against
 * lmdb's 0.6 us for one C call; a put pays as much again around its flock. This module does the
 * common case of each in one call and answers SLOW for everything else, which the Python code
 * in shmfs/backends/tmpfs/ then does as it always has. It follows exactly the protocols
 * documented there and in docs/tmpfs-format.md (the index's stores, the slot's seal, the large
 * file's seqlock and control word, the metadata's DIRTY word and counts, the segment's flock);
 * it adds none of its own, so Python and C readers and writers, in one process or many, mix
 * freely.
 *
 * What counts as the common case (docs/c-fast-path.md says it at length):
 *   get: the index names the variable and is the current one, no writer is mid-change (DIRTY
 *        clear), no recovery happened since the handle last looked; the slot (or the large
 *        variable's mapped file) holds it whole; the frame is unsigned, at most SMALL bytes, of a
 *        known codec, and passes its checks; a pickling codec only for a file a trusted uid
 *        wrote.
 *   put: the segment lock is this thread's already (inside lock(), update(), a Cache's set) or
 *        had at once (flock with LOCK_NB); no DIRTY, recovery, waiters or destroy; a slot of a
 *        file this handle maps is free (or the large variable's mapped file takes it in place);
 *        the value fits the segment's size, and the index needs no growing.
 * Anything else (damage included) is SLOW, and the Python path says precisely what is wrong.
 *
 * Threads. Every call runs start to end holding the GIL, so no other thread of this process
 * runs meanwhile; the segment lock's thread lock is taken (without waiting) as locking.py
 * takes it, so a put never writes beside another thread's locked section.
 * A build without a GIL (free-threaded CPython) does not build this module.
 *
 * The parts: hot.c (the Hot type, its get, the large-file get), slab.c (the index lookup, the
 * slot get and put), put.c (its put), plain.c (which values a put takes), checksum.c (the frame's crc32), unpickle.c (plain values' pickles read), keyhash.c (a Cache key's index), cachehits.c (a Cache's hit), cacheset.c (a Cache's set), mapping.c (Mapping: a file mapped without keeping
 * its descriptor, for largefile.py before Python 3.13), batch.c (get_many of Hot and SysvHot, and
 * Frames: a redis batch reply decoded), resp.c (a redis HMGET's raw reply scanned), and this file (the module).
 */
#include "hot.h"
#include "sysv.h"

#include <pthread.h>

uint64_t fork_epoch = 0;
PyObject *SLOW;
PyObject *pickle_dumps;
PyObject *pickle_loads;
PyObject *protocol;
PyObject *str_hot;

static void
after_fork_in_child(void)
{
    fork_epoch++;
}

static PyMethodDef module_methods[] = {
    {"crc32", (PyCFunction)(void (*)(void))hot_crc32, METH_FASTCALL, crc32_doc},
    {"rehash", (PyCFunction)(void (*)(void))hot_rehash, METH_FASTCALL, rehash_doc},
    {"key_slot", hot_key_slot, METH_O, key_slot_doc},
    {"plain_loads", hot_plain_loads, METH_O, plain_loads_doc},
    {"tuple_head", hot_tuple_head, METH_O, tuple_head_doc},
    {"resp_many", (PyCFunction)(void (*)(void))hot_resp_many, METH_FASTCALL, resp_many_doc},
    {"resp_hmget", (PyCFunction)(void (*)(void))hot_resp_hmget, METH_FASTCALL, resp_hmget_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef hot_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "shmfs._hot",
    .m_doc = "The tmpfs backend's get and put of small values, in C (see shmfs/hotpath.py).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__hot(void)
{
    crc_init();
    if (keyhash_init() < 0) {
        return NULL;
    }
    if (PyType_Ready(&HotType) < 0 || PyType_Ready(&MappingType) < 0
        || PyType_Ready(&KeySlotsType) < 0 || PyType_Ready(&CacheHitsType) < 0
        || PyType_Ready(&CacheSetsType) < 0
        || PyType_Ready(&SysvHotType) < 0 || PyType_Ready(&FramesType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&hot_module);
    if (module == NULL) {
        return NULL;
    }
    /* One SLOW for C and Python: the Backend Protocol's (shmfs/backends/__init__.py). */
    PyObject *backends = PyImport_ImportModule("shmfs.backends");
    SLOW = backends != NULL ? PyObject_GetAttrString(backends, "SLOW") : NULL;
    Py_XDECREF(backends);
    PyObject *pickle = PyImport_ImportModule("pickle");
    pickle_dumps = pickle != NULL ? PyObject_GetAttrString(pickle, "dumps") : NULL;
    pickle_loads = pickle != NULL ? PyObject_GetAttrString(pickle, "loads") : NULL;
    Py_XDECREF(pickle);
    protocol = PyLong_FromLong(5);
    str_hot = PyUnicode_InternFromString("hot");
    /* The lock words' numbers, for tests/test_layout.py to hold equal to locking.py's. */
    PyObject *lock_words = Py_BuildValue("(iiii)", LOCK_DEPTH, LOCK_FD, LOCK_FLAGS, LOCK_WORDS);
    /* And the split check's numbers, to hold equal to frame.py's. */
    PyObject *split_check = Py_BuildValue("(ii)", FULL_CHECK_LIMIT, CHECK_EDGE);
    if (SLOW == NULL || pickle_dumps == NULL || pickle_loads == NULL || protocol == NULL || str_hot == NULL
        || PyModule_AddObjectRef(module, "SLOW", SLOW) < 0
        || lock_words == NULL || PyModule_AddObjectRef(module, "LOCK_WORDS", lock_words) < 0
        || split_check == NULL || PyModule_AddObjectRef(module, "SPLIT_CHECK", split_check) < 0
        || PyModule_AddObjectRef(module, "Hot", (PyObject *)&HotType) < 0
        || PyModule_AddObjectRef(module, "Mapping", (PyObject *)&MappingType) < 0
        || PyModule_AddObjectRef(module, "KeySlots", (PyObject *)&KeySlotsType) < 0
        || PyModule_AddObjectRef(module, "CacheHits", (PyObject *)&CacheHitsType) < 0
        || PyModule_AddObjectRef(module, "CacheSets", (PyObject *)&CacheSetsType) < 0
        || PyModule_AddObjectRef(module, "SysvHot", (PyObject *)&SysvHotType) < 0
        || PyModule_AddObjectRef(module, "Frames", (PyObject *)&FramesType) < 0
        || pthread_atfork(NULL, NULL, after_fork_in_child) != 0) {
        Py_XDECREF(lock_words);
        Py_XDECREF(split_check);
        Py_DECREF(module);
        return NULL;
    }
    Py_DECREF(lock_words);
    Py_DECREF(split_check);
    return module;
}
