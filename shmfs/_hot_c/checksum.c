/* shmfs._hot: the frame's checksum. */
#include "hot.h"

#include <string.h>
#include <zlib.h>

/* The frame's checksum is zlib's crc32 (codecs.py). zlib computes it fastest on long buffers,
 * but on the short frames most gets and puts carry its set-up dominates: below SHORT_CRC bytes
 * eight-byte slicing by tables is up to three times faster (measured here: 39 ns against 124 at
 * 64 bytes, 67 against 108 at 128; level at about 320, zlib ahead past it). Checked against
 * zlib.crc32 (tests/test_hotpath.py). */
#define SHORT_CRC 320
static uint32_t crc_table[8][256];

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define FOLDING 1
/* Past FOLD_MIN bytes, where the CPU multiplies carry-less (PCLMULQDQ), the crc folds 16 bytes
 * at a time (Intel's "Fast CRC Computation for Generic Polynomials Using PCLMULQDQ", with zlib's
 * reflected polynomial; the constants are the paper's, as Linux's crc32-pclmul uses them): the
 * two crcs of a small value's get (its stamp and its frame, ~130 bytes each) drop from ~65 ns
 * to ~15 each. Below it, the tables. Checked against zlib.crc32 at every length up to 1 KiB
 * and more (tests/test_hotpath.py). */
#define FOLD_MIN 64
static int folding;

/* pshufb masks (from ``length`` on, for the last 1 to 15 bytes): byte i of the state moved to
 * i + 16 - length, the bytes below cleared (their high bit set). */
static const signed char shift_table[32] = {
    -16, -15, -14, -13, -12, -11, -10, -9, -8, -7, -6, -5, -4, -3, -2, -1,
    0,   1,   2,   3,   4,   5,   6,   7,  8,  9,  10, 11, 12, 13, 14, 15,
};

/* The crc register (pre- and post-inverted by the caller) over ``length`` bytes, at least
 * FOLD_MIN. */
__attribute__((target("pclmul,sse4.1"))) static uint32_t
crc32_folded(uint32_t crc, const unsigned char *bytes, size_t length)
{
    const __m128i k1k2 = _mm_set_epi64x(0x01c6e41596LL, 0x0154442bd4LL);
    const __m128i k3k4 = _mm_set_epi64x(0x00ccaa009eLL, 0x01751997d0LL);
    const __m128i k5 = _mm_set_epi64x(0, 0x0163cd6124LL);
    const __m128i poly = _mm_set_epi64x(0x01f7011641LL, 0x01db710641LL);
    const __m128i low32 = _mm_setr_epi32(~0, 0, ~0, 0);
    __m128i x1 = _mm_xor_si128(_mm_loadu_si128((const __m128i *)bytes), _mm_cvtsi32_si128((int)crc));
    __m128i x2;
    if (length < 128) {
        /* One lane: on a short buffer (a small value's frame) setting up and joining four costs
         * more than their parallel folds save. */
        bytes += 16;
        length -= 16;
        goto one_lane;
    }
    x2 = _mm_loadu_si128((const __m128i *)(bytes + 16));
    __m128i x3 = _mm_loadu_si128((const __m128i *)(bytes + 32));
    __m128i x4 = _mm_loadu_si128((const __m128i *)(bytes + 48));
    bytes += 64;
    length -= 64;
    for (; length >= 64; bytes += 64, length -= 64) { /* four lanes, 64 bytes a step */
        __m128i y1 = _mm_clmulepi64_si128(x1, k1k2, 0x00);
        __m128i y2 = _mm_clmulepi64_si128(x2, k1k2, 0x00);
        __m128i y3 = _mm_clmulepi64_si128(x3, k1k2, 0x00);
        __m128i y4 = _mm_clmulepi64_si128(x4, k1k2, 0x00);
        x1 = _mm_xor_si128(_mm_clmulepi64_si128(x1, k1k2, 0x11), y1);
        x2 = _mm_xor_si128(_mm_clmulepi64_si128(x2, k1k2, 0x11), y2);
        x3 = _mm_xor_si128(_mm_clmulepi64_si128(x3, k1k2, 0x11), y3);
        x4 = _mm_xor_si128(_mm_clmulepi64_si128(x4, k1k2, 0x11), y4);
        x1 = _mm_xor_si128(x1, _mm_loadu_si128((const __m128i *)bytes));
        x2 = _mm_xor_si128(x2, _mm_loadu_si128((const __m128i *)(bytes + 16)));
        x3 = _mm_xor_si128(x3, _mm_loadu_si128((const __m128i *)(bytes + 32)));
        x4 = _mm_xor_si128(x4, _mm_loadu_si128((const __m128i *)(bytes + 48)));
    }
    /* The four lanes into one, then the rest 16 bytes a step. */
    __m128i lanes[3] = {x2, x3, x4};
    for (int i = 0; i < 3; i++) {
        __m128i y = _mm_clmulepi64_si128(x1, k3k4, 0x00);
        x1 = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x1, k3k4, 0x11), lanes[i]), y);
    }
one_lane:
    for (; length >= 16; bytes += 16, length -= 16) {
        __m128i y = _mm_clmulepi64_si128(x1, k3k4, 0x00);
        x1 = _mm_xor_si128(_mm_clmulepi64_si128(x1, k3k4, 0x11), y);
        x1 = _mm_xor_si128(x1, _mm_loadu_si128((const __m128i *)bytes));
    }
    if (length > 0) {
        /* The last 1 to 15 bytes folded too (zlib-ng's partial fold): the message read as zeros,
         * the state and the rest, cut into two blocks at 16 bytes from its end, the state's
         * first ``length`` bytes in the first one (after zeros, which change no crc), its other
         * bytes and the rest (the last 16 bytes of the buffer, loaded whole) in the second. */
        __m128i back = _mm_loadu_si128((const __m128i *)(shift_table + length));
        __m128i first = _mm_shuffle_epi8(x1, back);
        __m128i down = _mm_shuffle_epi8(x1, _mm_add_epi8(back, _mm_set1_epi8(16)));
        __m128i second = _mm_blendv_epi8(_mm_loadu_si128((const __m128i *)(bytes + length - 16)), down, back);
        __m128i y = _mm_clmulepi64_si128(first, k3k4, 0x00);
        x1 = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(first, k3k4, 0x11), y), second);
    }
    /* 128 bits to 64, then Barrett's reduction to 32. */
    x2 = _mm_clmulepi64_si128(x1, k3k4, 0x10);
    x1 = _mm_xor_si128(_mm_srli_si128(x1, 8), x2);
    x2 = _mm_srli_si128(x1, 4);
    x1 = _mm_xor_si128(_mm_clmulepi64_si128(_mm_and_si128(x1, low32), k5, 0x00), x2);
    x2 = _mm_clmulepi64_si128(_mm_and_si128(x1, low32), poly, 0x10);
    x2 = _mm_clmulepi64_si128(_mm_and_si128(x2, low32), poly, 0x00);
    x1 = _mm_xor_si128(x1, x2);
    return (uint32_t)_mm_extract_epi32(x1, 1);
}
#endif

void
crc_init(void)
{
#ifdef FOLDING
    __builtin_cpu_init();
    folding = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
#endif
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) {
            c = c & 1 ? 0xEDB88320U ^ (c >> 1) : c >> 1;
        }
        crc_table[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = crc_table[0][n];
        for (int k = 1; k < 8; k++) {
            c = crc_table[0][c & 0xFF] ^ (c >> 8);
            crc_table[k][n] = c;
        }
    }
}

static uint32_t
crc32_sliced(uint32_t crc, const unsigned char *bytes, size_t length)
{
    crc = ~crc;
    for (; length >= 8; bytes += 8, length -= 8) {
        uint64_t word;
        memcpy(&word, bytes, 8); /* little-endian, checked above */
        uint32_t low = (uint32_t)word ^ crc, high = (uint32_t)(word >> 32);
        crc = crc_table[7][low & 0xFF] ^ crc_table[6][(low >> 8) & 0xFF]
              ^ crc_table[5][(low >> 16) & 0xFF] ^ crc_table[4][low >> 24]
              ^ crc_table[3][high & 0xFF] ^ crc_table[2][(high >> 8) & 0xFF]
              ^ crc_table[1][(high >> 16) & 0xFF] ^ crc_table[0][high >> 24];
    }
    while (length--) {
        crc = crc_table[0][(crc ^ *bytes++) & 0xFF] ^ (crc >> 8);
    }
    return ~crc;
}

/* Eight bytes more of a checksum in progress (crc32_sliced's step). */
#define CRC_STEP(c, at)                                                                          \
    do {                                                                                         \
        uint64_t word_;                                                                          \
        memcpy(&word_, (at), 8);                                                                 \
        (at) += 8;                                                                               \
        uint32_t low_ = (uint32_t)word_ ^ (c), high_ = (uint32_t)(word_ >> 32);                  \
        (c) = crc_table[7][low_ & 0xFF] ^ crc_table[6][(low_ >> 8) & 0xFF]                       \
              ^ crc_table[5][(low_ >> 16) & 0xFF] ^ crc_table[4][low_ >> 24]                     \
              ^ crc_table[3][high_ & 0xFF] ^ crc_table[2][(high_ >> 8) & 0xFF]                   \
              ^ crc_table[1][(high_ >> 16) & 0xFF] ^ crc_table[0][high_ >> 24];                  \
    } while (0)

/* Each of ``count`` buffers' checksum (zlib.crc32 continued from crc[i], and left there), four
 * at a time: a short buffer's crc waits on its own table lookups, eight bytes after eight, and
 * interleaving independent ones fills those waits (measured here on 131-byte frames: 63 ns
 * each one after another, 37 to 42 four at a time; checked against zlib.crc32 by
 * tests/test_batch_c.py). */
void
checksum_many(Py_ssize_t count, const unsigned char *const *data, const size_t *length,
              uint32_t *crc)
{
    Py_ssize_t i = 0;
#ifdef FOLDING
    if (folding) {
        i = count; /* folding one buffer at a time beats four interleaved table walks */
        for (Py_ssize_t j = 0; j < count; j++) {
            crc[j] = checksum(crc[j], data[j], length[j]);
        }
    }
#endif
    for (; i + 3 < count; i += 4) {
        const unsigned char *a = data[i], *b = data[i + 1], *c = data[i + 2], *d = data[i + 3];
        uint32_t ca = ~crc[i], cb = ~crc[i + 1], cc = ~crc[i + 2], cd = ~crc[i + 3];
        size_t common = length[i];
        for (int k = 1; k < 4; k++) {
            common = length[i + k] < common ? length[i + k] : common;
        }
        size_t blocks = common < SHORT_CRC ? common / 8 : 0;
        for (size_t block = 0; block < blocks; block++) {
            CRC_STEP(ca, a);
            CRC_STEP(cb, b);
            CRC_STEP(cc, c);
            CRC_STEP(cd, d);
        }
        /* The rest as checksum() would go on with it (zlib's, if long). */
        crc[i] = checksum(~ca, a, length[i] - blocks * 8);
        crc[i + 1] = checksum(~cb, b, length[i + 1] - blocks * 8);
        crc[i + 2] = checksum(~cc, c, length[i + 2] - blocks * 8);
        crc[i + 3] = checksum(~cd, d, length[i + 3] - blocks * 8);
    }
    for (; i < count; i++) {
        crc[i] = checksum(crc[i], data[i], length[i]);
    }
}

uint32_t
checksum(uint32_t crc, const unsigned char *bytes, size_t length)
{
#ifdef FOLDING
    if (folding && length >= FOLD_MIN) {
        return ~crc32_folded(~crc, bytes, length);
    }
#endif
    if (length < SHORT_CRC) {
        return crc32_sliced(crc, bytes, length);
    }
    return (uint32_t)crc32_z(crc, bytes, length);
}

const char crc32_doc[] =
"crc32(data, value=0) -> int\n\n"
"zlib.crc32, as the fast path computes it (for tests: the two must agree).";

PyObject *
hot_crc32(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "crc32(data, value=0)");
        return NULL;
    }
    unsigned long value = nargs == 2 ? PyLong_AsUnsignedLongMask(args[1]) : 0;
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_buffer data;
    if (PyObject_GetBuffer(args[0], &data, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    uint32_t crc = checksum((uint32_t)value, data.buf, (size_t)data.len);
    PyBuffer_Release(&data);
    return PyLong_FromUnsignedLong(crc);
}

