/* Request-ingestion helpers that run without the GIL: gpu_mm._ingest (base64 itself is pybase64's, which
 * decodes a str with the GIL released).
 *
 * long_strings: where a JSON text's long string literals are, found without the GIL, so that gpu_mm.serve can
 * cut them out and hand json.loads only the rest (json.loads of a body carrying a 2.8 MB base64 video held the
 * GIL for 2-7 ms in one call, the next largest holder after base64). Only literals without escapes or control
 * characters, and not object keys, are reported: their text is their value, byte for byte.
 *
 * join and ascii_text: the copies that parsing a body makes, done without the GIL: the body's chunks joined
 * into one bytes object, and a cut-out literal made a str. With those in Python (b"".join, str(view, "utf-8"))
 * the parse thread held the GIL through each copy, ~0.1 ms per MB each, and a thread that holds the GIL in one
 * C call cannot be asked to let go; /health under hostile load measured that: a do-nothing server that parsed
 * each body as gpu-mm does on one thread answered /health slower than the same server without it (see
 * gpu_mm/serve.py, loads_json). Both objects are allocated with the GIL held and filled without it: nothing
 * else can see them before they are returned.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    Py_ssize_t *v; /* start, end pairs */
    Py_ssize_t n, cap;
    int failed;
} Spans;

static void push(Spans *sp, Py_ssize_t start, Py_ssize_t end) {
    if (sp->n + 2 > sp->cap) {
        Py_ssize_t cap = sp->cap ? 2 * sp->cap : 32;
        Py_ssize_t *v = PyMem_RawRealloc(sp->v, (size_t)cap * sizeof *v);
        if (v == NULL) {
            sp->failed = 1;
            return;
        }
        sp->v = v;
        sp->cap = cap;
    }
    sp->v[sp->n++] = start;
    sp->v[sp->n++] = end;
}

/* A JSON text is scanned as JSON's grammar for strings has it: outside a string a '"' opens one; inside, a
 * backslash escapes the next byte and a '"' closes it. Whatever else the text holds is json.loads' to judge. */
static void scan(const char *s, Py_ssize_t n, Py_ssize_t min_len, Spans *sp) {
    const char *end = s + n, *p = s;
    while (p < end && !sp->failed) {
        const char *open = memchr(p, '"', (size_t)(end - p));
        if (open == NULL) return;
        const char *c = open + 1, *close;
        int escaped = 0;
        for (;;) {
            close = memchr(c, '"', (size_t)(end - c));
            if (close == NULL) return; /* unterminated: json.loads will say so */
            const char *bs = memchr(c, '\\', (size_t)(close - c));
            if (bs == NULL) break;
            escaped = 1;
            c = bs + 2; /* the escaped byte, maybe a '"', is part of the string */
            if (c > end) return;
        }
        Py_ssize_t len = close - open - 1;
        if (len >= min_len && !escaped) {
            int control = 0;
            for (const unsigned char *u = (const unsigned char *)open + 1; u < (const unsigned char *)close; u++)
                control |= *u < 0x20;
            const char *after = close + 1;
            while (after < end && (*after == ' ' || *after == '\t' || *after == '\n' || *after == '\r')) after++;
            if (!control && !(after < end && *after == ':')) push(sp, open + 1 - s, close - s);
        }
        p = close + 1;
    }
}

PyDoc_STRVAR(long_strings_doc,
             "long_strings(text, min_len) -> list[tuple[int, int]]\n\n"
             "The (start, end) byte offsets of the contents of the JSON string literals in text (a bytes-like\n"
             "object) that are at least min_len bytes long, hold no backslash escape and no control character,\n"
             "and are not object keys; scanned without holding the GIL.");

static PyObject *long_strings(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer view;
    Py_ssize_t min_len;
    if (!PyArg_ParseTuple(args, "y*n:long_strings", &view, &min_len)) return NULL;
    Spans sp = {NULL, 0, 0, 0};
    Py_BEGIN_ALLOW_THREADS
    scan((const char *)view.buf, view.len, min_len < 1 ? 1 : min_len, &sp);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    PyObject *out = sp.failed ? PyErr_NoMemory() : PyList_New(sp.n / 2);
    for (Py_ssize_t k = 0; out != NULL && k < sp.n / 2; k++) {
        PyObject *pair = Py_BuildValue("(nn)", sp.v[2 * k], sp.v[2 * k + 1]);
        if (pair == NULL) Py_CLEAR(out);
        else PyList_SET_ITEM(out, k, pair);
    }
    PyMem_RawFree(sp.v);
    return out;
}

PyDoc_STRVAR(join_doc,
             "join(chunks) -> bytes\n\n"
             "b\"\".join(chunks) for a list of bytes objects, the copy made without holding the GIL. One chunk is\n"
             "returned as it is, as b\"\".join does.");

static PyObject *join(PyObject *self, PyObject *arg) {
    (void)self;
    if (!PyList_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "join() takes a list of bytes, not %.100s", Py_TYPE(arg)->tp_name);
        return NULL;
    }
    PyObject *chunks = PyList_AsTuple(arg); /* holds every chunk while the GIL is released */
    if (chunks == NULL) return NULL;
    Py_ssize_t count = PyTuple_GET_SIZE(chunks), total = 0;
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *c = PyTuple_GET_ITEM(chunks, k);
        if (!PyBytes_CheckExact(c)) {
            PyErr_Format(PyExc_TypeError, "join() chunk %zd is %.100s, not bytes", k, Py_TYPE(c)->tp_name);
            Py_DECREF(chunks);
            return NULL;
        }
        if (PyBytes_GET_SIZE(c) > PY_SSIZE_T_MAX - total) {
            Py_DECREF(chunks);
            return PyErr_NoMemory();
        }
        total += PyBytes_GET_SIZE(c);
    }
    if (count == 1) {
        PyObject *only = Py_NewRef(PyTuple_GET_ITEM(chunks, 0));
        Py_DECREF(chunks);
        return only;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL) {
        Py_DECREF(chunks);
        return NULL;
    }
    char *dst = PyBytes_AS_STRING(out);
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *c = PyTuple_GET_ITEM(chunks, k); /* bytes are immutable; the tuple keeps them alive */
        memcpy(dst, PyBytes_AS_STRING(c), (size_t)PyBytes_GET_SIZE(c));
        dst += PyBytes_GET_SIZE(c);
    }
    Py_END_ALLOW_THREADS
    Py_DECREF(chunks);
    return out;
}

PyDoc_STRVAR(ascii_text_doc,
             "ascii_text(buffer, start, end) -> str | None\n\n"
             "buffer[start:end] as a str when every byte is ASCII (what str(view, 'utf-8') gives then), copied and\n"
             "checked without holding the GIL; None when a byte is not ASCII (decode it as UTF-8 then).");

static PyObject *ascii_text(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer view;
    Py_ssize_t start, end;
    if (!PyArg_ParseTuple(args, "y*nn:ascii_text", &view, &start, &end)) return NULL;
    if (start < 0 || end < start || end > view.len) {
        PyBuffer_Release(&view);
        PyErr_Format(PyExc_ValueError, "span [%zd, %zd) is not within a buffer of %zd bytes", start, end, view.len);
        return NULL;
    }
    Py_ssize_t n = end - start;
    PyObject *out = PyUnicode_New(n, 127); /* compact ASCII: one byte per character, NUL-terminated */
    if (out == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    const unsigned char *src = (const unsigned char *)view.buf + start;
    unsigned char *dst = PyUnicode_1BYTE_DATA(out);
    unsigned char high = 0;
    Py_BEGIN_ALLOW_THREADS
    memcpy(dst, src, (size_t)n);
    for (Py_ssize_t k = 0; k < n; k++) high |= dst[k];
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    if (high & 0x80) {
        Py_DECREF(out);
        Py_RETURN_NONE;
    }
    return out;
}

static PyMethodDef methods[] = {
    {"long_strings", long_strings, METH_VARARGS, long_strings_doc},
    {"join", join, METH_O, join_doc},
    {"ascii_text", ascii_text, METH_VARARGS, ascii_text_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "gpu_mm._ingest",
    .m_doc = "Request-ingestion helpers that run without the GIL (see gpu_mm.serve.loads_json).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__ingest(void) {
    return PyModule_Create(&module);
}
