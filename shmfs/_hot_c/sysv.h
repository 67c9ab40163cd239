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

#endif
