/* Cutting the messages of bulk reads out of nats-py's read buffer (adapters/jetstream/nats_client.py).
 *
 * Why: a read of 10,000 stored events spent about two thirds of its time in nats-py handing each
 * message on, one at a time, in Python: a regular expression for its control line, a Msg object,
 * a queue, a task and a callback (docs/benchmarks.md, "Reads past nats-py's dispatch"). The
 * messages of a bulk read all go to one subscription and carry only a payload, so here they are
 * cut out of the buffer in one pass, as a list of payloads.
 *
 * scan() only ever takes the common path: frames that are not a MSG or HMSG of a registered
 * subscription, or one it does not fully understand, are left to nats-py's own parser (FOREIGN for
 * complete frames up to the next of a sink's, DEFER for the rest of the buffer), which handles or
 * refuses them as it always has. Every bound is checked against the end of the buffer: the server's
 * bytes decide nothing here beyond which path they take.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum Kind {
    RUN = 0,        /* payloads (and maybe a header frame, which ends the run) of one subscription */
    FOREIGN = 1,    /* buf[:end] is complete frames for nats-py's parser */
    INCOMPLETE = 2, /* the next frame has not fully arrived */
    DEFER = 3       /* something this scanner does not take: nats-py's parser takes the rest */
};

/* nats-py's MAX_CONTROL_LINE_SIZE: a longer line without CRLF is nats-py's to refuse */
#define MAX_CONTROL_LINE 4096
/* sizes are at most this many digits: no overflow below, whatever the server sends */
#define MAX_SIZE_DIGITS 12
#define MAX_TOKENS 5

typedef struct {
    const char *start;
    Py_ssize_t length;
} Token;

/* The CR of the first CRLF in [from, end), or NULL. */
static const char *
find_crlf(const char *from, const char *end)
{
    while (from < end) {
        const char *cr = memchr(from, '\r', (size_t)(end - from));
        if (cr == NULL || cr + 1 >= end)
            return NULL;
        if (cr[1] == '\n')
            return cr;
        from = cr + 1;
    }
    return NULL;
}

/* The tokens of [s, end) split on spaces and tabs; -1 when there are more than max, or a character
 * other than a printable ASCII one, a space or a tab (nats-py's parser decides about those). */
static int
split(const char *s, const char *end, Token *out, int max)
{
    int count = 0;
    while (s < end) {
        while (s < end && (*s == ' ' || *s == '\t'))
            s++;
        if (s == end)
            break;
        const char *start = s;
        while (s < end && *s != ' ' && *s != '\t') {
            if ((unsigned char)*s < 0x21 || (unsigned char)*s > 0x7e)
                return -1;
            s++;
        }
        if (count == max)
            return -1;
        out[count].start = start;
        out[count].length = s - start;
        count++;
    }
    return count;
}

/* A decimal number of 1 to MAX_SIZE_DIGITS digits, or -1. */
static int64_t
number(Token t)
{
    if (t.length < 1 || t.length > MAX_SIZE_DIGITS)
        return -1;
    int64_t value = 0;
    for (Py_ssize_t i = 0; i < t.length; i++) {
        char c = t.start[i];
        if (c < '0' || c > '9')
            return -1;
        value = value * 10 + (c - '0');
    }
    return value;
}

static int
registered(PyObject *sinks, int64_t sid)
{
    PyObject *key = PyLong_FromLongLong(sid);
    if (key == NULL)
        return -1;
    int found = PyDict_Contains(sinks, key);
    Py_DECREF(key);
    return found;
}

PyDoc_STRVAR(scan_doc,
"scan(buf, sinks, limit) -> (kind, end, sid, payloads, header, size)\n\n"
"From the start of ``buf`` (nats-py's parser buffer, at a control line): a RUN of up to ``limit``\n"
"payloads of one subscription whose sid is a key of the dict ``sinks``, ending before any other\n"
"frame, or with a frame that has headers (``header``, its header bytes); or FOREIGN, complete\n"
"frames for nats-py's parser, up to the next of a sink's; or INCOMPLETE (wait for more bytes);\n"
"or DEFER (nats-py's parser takes the rest). ``end``: the bytes taken; ``size``: the payloads'\n"
"total length.");

static PyObject *
scan(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyDict_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "scan(buf, sinks: dict, limit: int)");
        return NULL;
    }
    PyObject *sinks = args[1];
    Py_ssize_t limit = PyLong_AsSsize_t(args[2]);
    if (limit == -1 && PyErr_Occurred())
        return NULL;
    if (limit < 1) {
        PyErr_SetString(PyExc_ValueError, "scan: limit must be at least 1");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const char *base = view.buf;
    const char *end = base + view.len;
    PyObject *payloads = PyList_New(0);
    PyObject *header = NULL;
    if (payloads == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    int kind = -1; /* what the frames taken so far are: RUN, FOREIGN, or nothing yet */
    int64_t run_sid = -1;
    Py_ssize_t size = 0;
    const char *at = base;
    for (;;) {
        if (kind == RUN && PyList_GET_SIZE(payloads) >= limit)
            break;
        if (at == end)
            break;
        const char *line_end = find_crlf(at, end - at > MAX_CONTROL_LINE ? at + MAX_CONTROL_LINE : end);
        if (line_end == NULL) {
            if (kind < 0)
                kind = end - at >= MAX_CONTROL_LINE ? DEFER : INCOMPLETE;
            break;
        }
        int headed;
        const char *arguments;
        if (line_end - at > 4 && memcmp(at, "MSG", 3) == 0 && (at[3] == ' ' || at[3] == '\t')) {
            headed = 0;
            arguments = at + 3;
        }
        else if (line_end - at > 5 && memcmp(at, "HMSG", 4) == 0 && (at[4] == ' ' || at[4] == '\t')) {
            headed = 1;
            arguments = at + 4;
        }
        else {  /* PING, PONG, +OK, -ERR, INFO, ...: one line, nats-py's */
            if (kind == RUN)
                break;
            kind = FOREIGN;
            at = line_end + 2;
            continue;
        }
        Token tokens[MAX_TOKENS];
        int n = split(arguments, line_end, tokens, MAX_TOKENS);
        /* MSG subject sid [reply] size; HMSG subject sid [reply] header-size total-size */
        int64_t sid = -1, header_size = 0, total = -1;
        if (!headed && (n == 3 || n == 4)) {
            sid = number(tokens[1]);
            total = number(tokens[n - 1]);
        }
        else if (headed && (n == 4 || n == 5)) {
            sid = number(tokens[1]);
            header_size = number(tokens[n - 2]);
            total = number(tokens[n - 1]);
        }
        if (sid < 0 || header_size < 0 || total < 0 || header_size > total) {
            if (kind < 0)
                kind = DEFER;
            break;
        }
        if (header_size == 0)  /* nats-py reads it as a message without headers */
            headed = 0;
        const char *body = line_end + 2;
        int complete = end - body >= total + 2;
        if (kind == RUN) {
            if (sid != run_sid)
                break;
        }
        else {
            int ours = registered(sinks, sid);
            if (ours < 0)
                goto error;
            if (!ours) {  /* another subscription's message: nats-py's too */
                if (!complete) {
                    if (kind < 0)
                        kind = INCOMPLETE;
                    break;
                }
                kind = FOREIGN;
                at = body + total + 2;
                continue;
            }
            if (kind == FOREIGN)
                break;
        }
        if (!complete) {
            if (kind < 0)
                kind = INCOMPLETE;
            break;
        }
        kind = RUN;
        run_sid = sid;
        at = body + total + 2;
        if (headed) {  /* a status (end of batch, no messages, an error): it ends the run */
            header = PyBytes_FromStringAndSize(body, (Py_ssize_t)header_size);
            if (header == NULL)
                goto error;
            break;
        }
        PyObject *payload = PyBytes_FromStringAndSize(body, (Py_ssize_t)total);
        if (payload == NULL)
            goto error;
        int failed = PyList_Append(payloads, payload);
        Py_DECREF(payload);
        if (failed)
            goto error;
        size += (Py_ssize_t)total;
    }
    if (kind < 0)
        kind = INCOMPLETE;
    Py_ssize_t taken = kind == RUN || kind == FOREIGN ? at - base : 0;
    PyBuffer_Release(&view);
    PyObject *result = Py_BuildValue("(innNNn)", kind, taken, (Py_ssize_t)run_sid, payloads,
                                     header ? header : Py_NewRef(Py_None), size);
    return result;
error:
    PyBuffer_Release(&view);
    Py_XDECREF(payloads);
    Py_XDECREF(header);
    return NULL;
}

static PyMethodDef frames_methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL, scan_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef frames_module = {
    PyModuleDef_HEAD_INIT, "_frames",
    "Cutting the messages of bulk reads out of nats-py's read buffer (adapters/jetstream/nats_client.py).",
    -1, frames_methods,
};

PyMODINIT_FUNC
PyInit__frames(void)
{
    PyObject *module = PyModule_Create(&frames_module);
    if (module == NULL)
        return NULL;
    if (PyModule_AddIntConstant(module, "RUN", RUN) < 0 || PyModule_AddIntConstant(module, "FOREIGN", FOREIGN) < 0 ||
        PyModule_AddIntConstant(module, "INCOMPLETE", INCOMPLETE) < 0 ||
        PyModule_AddIntConstant(module, "DEFER", DEFER) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
