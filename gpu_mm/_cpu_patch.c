/* One pass from uint8 frames to Qwen-VL patch rows on the CPU: gpu_mm._cpu_patch.
 *
 * gpu_mm.ops.normalize_patchify's fast path. float32 output is computed element by element with transformers'
 * own float32 arithmetic ((v - 255 mean) / (255 std): an exact IEEE subtraction, then division, never contracted
 * or replaced by a reciprocal); bfloat16/float16 output is looked up in a per-channel table of the 256
 * values a pixel can take, made by torch with the same arithmetic (uint8 output: the pixels). Either way the
 * result is bit-identical to normalizing whole frames and laying the patches out afterwards. What it saves is
 * memory traffic: the frames are read once, in place (contiguous or channels-last, as a decoder's resize leaves
 * them), and every output byte is written once (past the caches when the output is larger than half the L3),
 * instead of a permuting copy plus three passes over a float32 tensor.
 *
 * The caller (gpu_mm.ops) checks dtypes, shapes and the output's size and keeps the tensors alive; the
 * checks here only keep a wrong call from reading or writing out of bounds. The GIL is released while the
 * rows are written, by one thread or several (each its own range of rows).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

typedef struct {
    const uint8_t *src;
    Py_ssize_t t, c, sT, sC, sH, sW; /* frames [T, C, H, W]; strides in bytes */
    const void *lut;                  /* [C][256] entries of `elem` bytes, or NULL */
    const float *mean, *std;          /* [C] float32 (255 mean, 255 std), or NULL */
    int elem;                         /* output element size */
    char *out;
    Py_ssize_t p, tp, m, gw;          /* patch, temporal patch, merge size; grid width in patches */
    Py_ssize_t hblocks;               /* merged rows of patches per temporal group (grid height / m) */
    Py_ssize_t begin, end;            /* units (temporal group, merged row of patches) this job writes */
    int stream;                       /* float32 output written with streaming stores (normalize_out) */
} Job;

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
/* One build for any x86-64, the widest vectors the machine has picked when the module loads. */
#define CLONES __attribute__((target_clones("default", "avx2", "arch=x86-64-v4")))
#else
#define CLONES
#endif

/* p pixels of one channel of a frame row, read with stride sw, to a uint8 buffer. The common patch sizes get a
 * constant length, so that the contiguous case compiles to a few wide moves. */
static inline void gather(uint8_t *restrict dst, const uint8_t *restrict s, Py_ssize_t p, Py_ssize_t sw) {
    if (sw == 1) {
        switch (p) {
        case 14: memcpy(dst, s, 14); break;
        case 16: memcpy(dst, s, 16); break;
        default: memcpy(dst, s, (size_t)p);
        }
    } else {
        for (Py_ssize_t i = 0; i < p; i++) dst[i] = s[i * sw];
    }
}

/* One interleaved RGB frame row (channels-last, as decoders and the resize hand frames over) split into three
 * channel rows, so that patches are then cut from contiguous runs. */
CLONES static void deinterleave3(uint8_t *restrict r, uint8_t *restrict g, uint8_t *restrict b,
                                 const uint8_t *restrict s, Py_ssize_t w) {
    for (Py_ssize_t i = 0; i < w; i++) {
        r[i] = s[3 * i];
        g[i] = s[3 * i + 1];
        b[i] = s[3 * i + 2];
    }
}

/* The float32 arithmetic of transformers' fused rescale + normalize, element by element: exact IEEE
 * subtraction then division, in that order (no contraction or reciprocal is allowed without -ffast-math,
 * which this file is never built with; the tests compare every bit against torch). */
CLONES static void normalize_run(float *restrict dst, const uint8_t *restrict u, Py_ssize_t n, float mean,
                                 float std) {
    for (Py_ssize_t i = 0; i < n; i++) dst[i] = ((float)u[i] - mean) / std;
}

/* The same arithmetic, written past the caches. The output (23 MB for a 1080p image) is larger than the caches
 * and written once, in order: ordinary stores first read every line they fill (read-for-ownership), so a third
 * of the memory traffic is data about to be overwritten; streaming stores skip that read. Same IEEE
 * operations on the same values, so the same bits (the tests compare every bit against torch); a head and a
 * tail of ordinary stores align the vector stores to the vector width. GPU_MM_NO_STREAM builds without them. */
#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && !defined(GPU_MM_NO_STREAM)
#include <immintrin.h>
#define STREAM 1
__attribute__((target("avx512f"))) static void normalize_stream512(float *restrict dst, const uint8_t *restrict u,
                                                                   Py_ssize_t n, float mean, float std) {
    Py_ssize_t i = 0;
    for (; i < n && ((uintptr_t)(dst + i) & 63); i++) dst[i] = ((float)u[i] - mean) / std;
    const __m512 vm = _mm512_set1_ps(mean), vs = _mm512_set1_ps(std);
    for (; i + 16 <= n; i += 16) {
        const __m512 x = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(u + i))));
        _mm512_stream_ps(dst + i, _mm512_div_ps(_mm512_sub_ps(x, vm), vs));
    }
    for (; i < n; i++) dst[i] = ((float)u[i] - mean) / std;
}

__attribute__((target("avx2"))) static void normalize_stream256(float *restrict dst, const uint8_t *restrict u,
                                                                Py_ssize_t n, float mean, float std) {
    Py_ssize_t i = 0;
    for (; i < n && ((uintptr_t)(dst + i) & 31); i++) dst[i] = ((float)u[i] - mean) / std;
    const __m256 vm = _mm256_set1_ps(mean), vs = _mm256_set1_ps(std);
    for (; i + 8 <= n; i += 8) {
        const __m256 x = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(u + i))));
        _mm256_stream_ps(dst + i, _mm256_div_ps(_mm256_sub_ps(x, vm), vs));
    }
    for (; i < n; i++) dst[i] = ((float)u[i] - mean) / std;
}
#endif

typedef void (*NormalizeFn)(float *restrict, const uint8_t *restrict, Py_ssize_t, float, float);
/* Chosen once at import (PyInit): the widest streaming variant the machine has, else normalize_run. */
static NormalizeFn normalize_out = normalize_run;
/* Outputs at least this large are streamed; smaller ones stay in the caches for whoever reads them next, as
 * memcpy decides (half the L3 cache, read at import; 16 MiB where the kernel does not say). */
static Py_ssize_t stream_from = (Py_ssize_t)16 << 20;

#define LOOKUP(NAME, TYPE)                                                                                \
    static void NAME(TYPE *restrict dst, const uint8_t *restrict u, Py_ssize_t n, const TYPE *lut) {      \
        for (Py_ssize_t i = 0; i < n; i++) dst[i] = lut[u[i]];                                            \
    }
LOOKUP(lookup8, uint8_t)
LOOKUP(lookup16, uint16_t)
LOOKUP(lookup32, uint32_t)

/* Rows in Qwen-VL order: (temporal group, h-block, w-block, h-in-merge, w-in-merge); each row is
 * (channel, temporal, patch row, patch column). A temporal slot past the last frame repeats it, as
 * transformers pads an odd clip and repeats a single image.
 *
 * A unit (one temporal group, one merged row of patches: m*p frame rows) is written in two steps. Its pixels
 * are first laid out as uint8 in a staging buffer (a few hundred KiB, cache-resident), reading every frame
 * row once from left to right, which the hardware prefetches (reading patch by patch instead jumps between
 * m*p*C*tp rows and stalls on memory); the staging buffer is then converted in order into the output, in
 * runs of tp*p*p elements of one channel, long enough to vectorize. With no conversion asked the pixels are
 * laid out straight into the output. */
static void *work(void *arg) {
    /* Everything the loops read is copied to locals first: the uint8 stores below may alias any memory as far
     * as the compiler knows, which would otherwise reload (and re-divide) these on every iteration. */
    const Job *j = (const Job *)arg;
    const Py_ssize_t p = j->p, tp = j->tp, m = j->m, C = j->c, T = j->t, run = tp * p * p, row = C * run;
    const Py_ssize_t w = j->gw * p, wblocks = j->gw / m, hblocks = j->hblocks, unit = j->gw * m * row;
    const Py_ssize_t sT = j->sT, sH = j->sH, elem = j->elem;
    const uint8_t *const src = j->src;
    const float *const mean = j->mean, *const std = j->std;
    const void *const lut = j->lut;
    const int convert = lut != NULL || mean != NULL;
    /* Interleaved RGB rows are split into channel rows first, then cut like planar ones. */
    const int rgb = C == 3 && j->sC == 1 && j->sW == 3;
    const Py_ssize_t sC = rgb ? w : j->sC, sW = rgb ? 1 : j->sW;
    uint8_t *stage = convert ? malloc((size_t)unit) : NULL;
    uint8_t *rgb_rows = rgb ? malloc((size_t)(3 * w)) : NULL;
    if ((convert && stage == NULL) || (rgb && rgb_rows == NULL)) {
        free(stage);
        free(rgb_rows);
        return (void *)1;
    }
    for (Py_ssize_t u = j->begin; u < j->end; u++) {
        const Py_ssize_t tg = u / hblocks, hb = u % hblocks;
        char *dst = j->out + (size_t)u * (size_t)unit * (size_t)elem;
        uint8_t *b = convert ? stage : (uint8_t *)dst;
        for (Py_ssize_t k = 0; k < tp; k++) {
            const Py_ssize_t t = tg * tp + k < T ? tg * tp + k : T - 1;
            for (Py_ssize_t hm = 0; hm < m; hm++)
                for (Py_ssize_t ph = 0; ph < p; ph++) {
                    const uint8_t *line = src + t * sT + ((hb * m + hm) * p + ph) * sH;
                    if (rgb) {
                        deinterleave3(rgb_rows, rgb_rows + w, rgb_rows + 2 * w, line, w);
                        line = rgb_rows;
                    }
                    for (Py_ssize_t c = 0; c < C; c++) {
                        const uint8_t *s = line + c * sC;
                        /* patch column x = wb * m + wm -> row (wb * m + hm) * m + wm of this unit */
                        uint8_t *d = b + hm * m * row + (c * tp + k) * p * p + ph * p;
                        for (Py_ssize_t wb = 0; wb < wblocks; wb++, d += m * m * row)
                            for (Py_ssize_t wm = 0; wm < m; wm++, s += p * sW) gather(d + wm * row, s, p, sW);
                    }
                }
        }
        if (convert) {
            for (Py_ssize_t r = 0, c = 0; r < unit / run; r++, c = c + 1 == C ? 0 : c + 1) {
                const uint8_t *su = stage + r * run;
                char *d = dst + (size_t)(r * run) * (size_t)elem;
                if (mean != NULL) (j->stream ? normalize_out : normalize_run)((float *)d, su, run, mean[c], std[c]);
                else if (elem == 4) lookup32((uint32_t *)d, su, run, (const uint32_t *)lut + c * 256);
                else if (elem == 2) lookup16((uint16_t *)d, su, run, (const uint16_t *)lut + c * 256);
                else lookup8((uint8_t *)d, su, run, (const uint8_t *)lut + c * 256);
            }
        }
    }
#ifdef STREAM
    if (j->stream) _mm_sfence(); /* streaming stores visible before the caller reads */
#endif
    free(stage);
    free(rgb_rows);
    return NULL;
}

#define MAX_THREADS 64

PyDoc_STRVAR(patch_rows_doc,
"patch_rows(src, shape, strides, mean, std, lut, elem, out, p, tp, m, threads)\n\n"
"Write the Qwen-VL patch rows of the uint8 frames at address src (shape (T, C, H, W), strides in bytes) to\n"
"the contiguous buffer at address out, as: float32 ((v - mean[c]) / std[c]) when mean and std (addresses of\n"
"C float32 values) are given; else each element looked up in the [C][256] table of `elem`-byte entries at\n"
"address lut; else the pixel bytes themselves (elem 1). Uses up to `threads` threads, without the GIL.");

static PyObject *patch_rows(PyObject *Py_UNUSED(self), PyObject *args) {
    unsigned long long src, mean, std, lut, out;
    Py_ssize_t t, c, h, w, sT, sC, sH, sW, p, tp, m, threads;
    int elem;
    if (!PyArg_ParseTuple(args, "K(nnnn)(nnnn)KKKiKnnnn", &src, &t, &c, &h, &w, &sT, &sC, &sH, &sW, &mean, &std,
                          &lut, &elem, &out, &p, &tp, &m, &threads))
        return NULL;
    if (!src || !out || t < 1 || c < 1 || p < 1 || tp < 1 || m < 1 || h % (p * m) || w % (p * m) || sT < 0 ||
        sC < 0 || sH < 0 || sW < 0) {
        PyErr_SetString(PyExc_ValueError, "patch_rows: bad frames, patch or merge size");
        return NULL;
    }
    const int arithmetic = mean && std;
    if (!(arithmetic ? elem == 4 && !lut : lut ? elem == 1 || elem == 2 || elem == 4 : elem == 1)) {
        PyErr_SetString(PyExc_ValueError, "patch_rows: elem must be 4 with mean and std, 1, 2 or 4 with a table, "
                                          "else 1");
        return NULL;
    }
    Job base = {.src = (const uint8_t *)(uintptr_t)src, .t = t, .c = c, .sT = sT, .sC = sC, .sH = sH, .sW = sW,
                .lut = (const void *)(uintptr_t)lut, .mean = arithmetic ? (const float *)(uintptr_t)mean : NULL,
                .std = arithmetic ? (const float *)(uintptr_t)std : NULL, .elem = elem,
                .out = (char *)(uintptr_t)out, .p = p, .tp = tp, .m = m, .gw = w / p, .hblocks = h / (p * m)};
    const Py_ssize_t units = ((t + tp - 1) / tp) * base.hblocks;
    if (units == 0) Py_RETURN_NONE; /* no rows to write */
    base.stream = arithmetic && normalize_out != normalize_run && units * (w / p) * m * c * tp * p * p * 4 >= stream_from;
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > units) threads = units;
    Job jobs[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    void *failed = NULL;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < threads; i++) {
        jobs[i] = base;
        jobs[i].begin = units * i / threads;
        jobs[i].end = units * (i + 1) / threads;
    }
    /* Jobs 1.. on their own threads (a job whose thread cannot start runs here), job 0 on this one. */
    for (Py_ssize_t i = 1; i < threads; i++) started[i] = pthread_create(&ids[i], NULL, work, &jobs[i]) == 0;
    failed = work(&jobs[0]);
    for (Py_ssize_t i = 1; i < threads; i++) {
        void *r = NULL;
        if (started[i]) pthread_join(ids[i], &r);
        else r = work(&jobs[i]);
        if (r) failed = r;
    }
    Py_END_ALLOW_THREADS
    if (failed) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* Whether the machine runs the streaming variant of this vector width (512: AVX-512, 256: AVX2; 0: none). */
static int stream_width_supported(int width) {
#ifdef STREAM
    __builtin_cpu_init();
    if (width == 512) return __builtin_cpu_supports("avx512f");
    if (width == 256) return __builtin_cpu_supports("avx2");
#endif
    return width == 0;
}

static int stream_width(void) {
#ifdef STREAM
    if (normalize_out == normalize_stream512) return 512;
    if (normalize_out == normalize_stream256) return 256;
#endif
    return 0;
}

static PyObject *streaming(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_ssize_t from = -1;
    int width = -1;
    if (!PyArg_ParseTuple(args, "|ni", &from, &width)) return NULL;
    const Py_ssize_t before = stream_from;
    const int was = stream_width();
    if (width >= 0) {
        if (!stream_width_supported(width)) {
            PyErr_Format(PyExc_ValueError, "streaming: no %d-bit variant on this machine", width);
            return NULL;
        }
#ifdef STREAM
        normalize_out = width == 512 ? normalize_stream512 : width == 256 ? normalize_stream256 : normalize_run;
#endif
    }
    if (from >= 0) stream_from = from;
    return Py_BuildValue("(ni)", before, was);
}

static PyMethodDef methods[] = {
    {"patch_rows", patch_rows, METH_VARARGS, patch_rows_doc},
    {"streaming", streaming, METH_VARARGS,
     "streaming([from_bytes[, width]]) -> (from_bytes, width) before: float32 outputs of at least from_bytes are "
     "written with streaming stores, by the variant of that vector width (512: AVX-512, 256: AVX2, 0: none; the "
     "widest the machine has unless set). For tests."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "gpu_mm._cpu_patch",
    .m_doc = "One-pass uint8 frames -> Qwen-VL patch rows on the CPU (see gpu_mm.ops.normalize_patchify).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__cpu_patch(void) {
#ifdef STREAM
    /* The L3 this CPU shares, as the kernel describes it (sysconf's figure can be the whole host chip's in a VM:
     * 320 MB on a 32 MB-L3 EPYC guest). */
    FILE *f = fopen("/sys/devices/system/cpu/cpu0/cache/index3/size", "r");
    long kib = 0;
    char unit = 0;
    if (f != NULL) {
        if (fscanf(f, "%ld%c", &kib, &unit) == 2 && kib > 0)
            stream_from = (Py_ssize_t)kib * (unit == 'M' ? 1 << 20 : unit == 'K' ? 1 << 10 : 1) / 2;
        fclose(f);
    }
    normalize_out = stream_width_supported(512)   ? normalize_stream512
                    : stream_width_supported(256) ? normalize_stream256
                                                  : normalize_run;
#endif
    return PyModule_Create(&module);
}
