/* A compiled decoder of the protobuf messages that every read decodes (stored events, snapshots),
 * straight from the wire format into the domain's frozen dataclasses.
 *
 * Why: reading a 10,000-event history spent about as long building the domain objects from the
 * parsed protobuf messages, attribute by attribute in Python, as nats-py spent receiving them
 * (docs/benchmarks.md, issue 25). Parsing the wire format here and building each object with its
 * fields at once takes a fraction of that.
 *
 * What it decodes is described by Shapes that codec/wire.py builds once from the generated
 * descriptors and the dataclasses: for each field number, the slot (dataclass field) it fills and
 * how. It only ever takes the common path: anything it does not expect (an unknown or legacy
 * field, a wire type that does not match, a repeated singular message, bytes that are not UTF-8,
 * a truncated record, a timestamp out of range) makes decode() return None, and the caller
 * decodes those bytes with the protobuf runtime as before, which raises the errors or upcasts.
 * So this file holds no error messages and no schema knowledge: every bound is checked against
 * the end of the buffer, and the worst that a hostile input gets is the slow path.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <stdint.h>
#include <structmember.h>

enum Kind {
    K_NONE = -1,     /* no field has this number: fall back */
    K_STRING = 0,
    K_INT32 = 1,
    K_INT64 = 2,
    K_UINT64 = 3,
    K_BOOL = 4,
    K_ENUM = 5,      /* extra: dict number -> name; an unknown number takes the slot's default */
    K_TIMESTAMP = 6, /* extra: the Unix epoch as an aware datetime, whose tzinfo the values get */
    K_REPEATED_STRING = 7,
    K_MAP = 8,       /* map<string, string> */
    K_REPEATED_MESSAGE = 9, /* extra: the items' Shape */
    K_MESSAGE = 10,  /* extra: the Shape; several numbers may share a slot (a oneof) */
    K_FALLBACK = 11, /* a field this path leaves to the protobuf runtime (legacy fields) */
    K_LAST = 11
};

typedef struct {
    int slot;
    int kind;
    PyObject *extra; /* borrowed from Shape.keep */
    PyObject *last;  /* the value this field decoded to last (texts, map keys, timestamps), owned */
    int64_t last_seconds, last_nanos; /* the timestamp ``last`` is */
} FieldSpec;

typedef struct {
    PyObject_HEAD
    PyObject *cls;       /* the type to build, or None for a dict */
    PyObject *names;     /* tuple of the slots' names, in the dataclass's field order */
    PyObject *defaults;  /* tuple: each slot's value when its field is absent */
    PyObject *keep;      /* the fields argument, which owns every FieldSpec.extra */
    char *fresh_dict;    /* per slot: absent means a new {} (maps) */
    char *repeated;      /* per slot: collected in a list, handed over as a tuple */
    Py_ssize_t nslots;
    FieldSpec *fields;   /* indexed by field number */
    Py_ssize_t nfields;
    /* check: decoded only if slot check_value equals the attribute check_name of the value in
     * slot check_of (a stored schema version and its payload type's current one); -1: none */
    Py_ssize_t check_value;
    Py_ssize_t check_of;
    PyObject *check_name;
    /* per slot: where instances of a slotted class (``__slots__``, as the events are) keep that
     * field, stored there directly; NULL when the class is not slotted, whose fields are set as
     * object.__setattr__ sets them */
    Py_ssize_t *offsets;
} Shape;

static PyTypeObject ShapeType;
static PyObject *empty_tuple;

/* ---- reading the wire format -------------------------------------------------------------- */

static inline int
read_varint(const unsigned char **pp, const unsigned char *end, uint64_t *out)
{
    const unsigned char *p = *pp;
    uint64_t value = 0;
    for (int shift = 0; shift < 64 && p < end; shift += 7) {
        unsigned char byte = *p++;
        value |= (uint64_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80)) {
            *pp = p;
            *out = value;
            return 0;
        }
    }
    return 1; /* truncated, or longer than ten bytes */
}

/* A length-delimited record's bounds; 1 if they run past the buffer. */
static inline int
read_span(const unsigned char **pp, const unsigned char *end, const unsigned char **start, Py_ssize_t *size)
{
    uint64_t length;
    if (read_varint(pp, end, &length) || length > (uint64_t)(end - *pp))
        return 1;
    *start = *pp;
    *size = (Py_ssize_t)length;
    *pp += length;
    return 0;
}

/* Decoding results: a value, this marker for "take the slow path" (no exception set; it never
 * reaches Python), or NULL with an exception set. */
static PyObject fallback_marker_storage;
#define IS_FALLBACK(o) ((o) == &fallback_marker_storage)

static PyObject *
decode_text(const unsigned char *start, Py_ssize_t size, PyObject **last)
{
    /* The same text as this field's last one (a story's id in each of its events, an actor, a
     * map's keys...) is that object again: no new string, and one copy of it in memory. Only ASCII
     * texts are compared, whose characters are their UTF-8 bytes. ``last`` NULL: no such memory. */
    PyObject *previous = last != NULL ? *last : NULL;
    if (previous != NULL && PyUnicode_GET_LENGTH(previous) == size &&
        memcmp(PyUnicode_DATA(previous), start, (size_t)size) == 0)
        return Py_NewRef(previous);
    PyObject *text = PyUnicode_DecodeUTF8((const char *)start, size, NULL);
    if (last != NULL && text != NULL && size <= 256 && PyUnicode_IS_COMPACT_ASCII(text))
        Py_XSETREF(*last, Py_NewRef(text));
    if (text == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
        PyErr_Clear(); /* the protobuf runtime reports it */
        return &fallback_marker_storage;
    }
    return text;
}

static PyObject *
decode_timestamp(const unsigned char *p, const unsigned char *end, FieldSpec *spec)
{
    int64_t seconds = 0;
    int64_t nanos = 0;
    while (p < end) {
        uint64_t tag, value;
        if (read_varint(&p, end, &tag) || (tag & 7) != 0 || read_varint(&p, end, &value))
            return &fallback_marker_storage;
        if ((tag >> 3) == 1)
            seconds = (int64_t)value;
        else if ((tag >> 3) == 2)
            nanos = (int32_t)value;
        else
            return &fallback_marker_storage;
    }
    /* A valid Timestamp: nanos in [0, 1e9) and a year in 1..9999 (seconds within ±3.2e11). */
    if (nanos < 0 || nanos > 999999999 || seconds < -62135596800LL || seconds > 253402300799LL)
        return &fallback_marker_storage;
    /* The events of one command share their timestamp, and so do many values of a state: the
     * same instant as this field's last one is that (immutable) datetime again. */
    if (spec->last != NULL && spec->last_seconds == seconds && spec->last_nanos == nanos)
        return Py_NewRef(spec->last);
    int64_t days = seconds / 86400;
    int64_t rest = seconds % 86400;
    if (rest < 0) {
        rest += 86400;
        days -= 1;
    }
    /* The civil date of a day count from 1970-01-01 (H. Hinnant's days_from_civil inverse),
     * the datetime made at once: epoch + timedelta(...) made two objects and normalised both. */
    int64_t z = days + 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    int day = (int)(doy - (153 * mp + 2) / 5 + 1);
    int month = (int)(mp < 10 ? mp + 3 : mp - 9);
    int year = (int)(yoe + era * 400 + (month <= 2));
    PyObject *moment = PyDateTimeAPI->DateTime_FromDateAndTime(
        year, month, day, (int)(rest / 3600), (int)(rest / 60 % 60), (int)(rest % 60), (int)(nanos / 1000),
        PyDateTime_DATE_GET_TZINFO(spec->extra), PyDateTimeAPI->DateTimeType);
    if (moment != NULL) {
        Py_XSETREF(spec->last, Py_NewRef(moment));
        spec->last_seconds = seconds;
        spec->last_nanos = nanos;
    }
    return moment;
}

static PyObject *decode_message(Shape *shape, const unsigned char *p, const unsigned char *end);

static int
decode_map_entry(PyObject *target, const unsigned char *p, const unsigned char *end, PyObject **last_key)
{
    PyObject *key = NULL, *value = NULL;
    int status = 1; /* 1: fall back, 0: done, -1: error */
    while (p < end) {
        uint64_t tag;
        const unsigned char *start;
        Py_ssize_t size;
        if (read_varint(&p, end, &tag) || (tag & 7) != 2 || read_span(&p, end, &start, &size))
            goto done;
        uint64_t number = tag >> 3;
        if (number != 1 && number != 2)
            goto done;
        PyObject *text = decode_text(start, size, number == 1 ? last_key : NULL);
        if (text == NULL) {
            status = -1;
            goto done;
        }
        if (IS_FALLBACK(text))
            goto done;
        PyObject **slot = number == 1 ? &key : &value;
        Py_XSETREF(*slot, text);
    }
    if (key == NULL)
        key = PyUnicode_FromStringAndSize("", 0);
    if (value == NULL)
        value = PyUnicode_FromStringAndSize("", 0);
    if (key == NULL || value == NULL) {
        status = -1;
        goto done;
    }
    status = PyDict_SetItem(target, key, value) < 0 ? -1 : 0;
done:
    Py_XDECREF(key);
    Py_XDECREF(value);
    return status;
}

/* The values built here are out of the cyclic collector's sight, as msgspec's Structs with
 * gc=False are: each is immutable and holds texts, numbers, datetimes, tuples of those or of other
 * such values, and dicts of texts, so none can be part of a reference cycle (unless someone puts a
 * value into one of those dicts, against their type: that cycle would never be freed). Tracked,
 * a 10,000-event history or a 10,000-event story's state was ~30,000 objects that every young
 * collection after the decode walked, and every full collection after that for as long as a
 * reader held them (docs/benchmarks.md, issue 25). */
static PyObject *
untracked_tuple(PyObject *items)
{
    PyObject *tuple = PyList_AsTuple(items);
    if (tuple == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(tuple); i++) {
        PyObject *item = PyTuple_GET_ITEM(tuple, i);
        if (PyObject_IS_GC(item) && PyObject_GC_IsTracked(item))
            return tuple;
    }
    PyObject_GC_UnTrack(tuple);
    return tuple;
}

static PyObject *
decode_message(Shape *shape, const unsigned char *p, const unsigned char *end)
{
    Py_ssize_t nslots = shape->nslots;
    PyObject *result = NULL;
    PyObject *on_stack[32] = {NULL};
    PyObject **values = nslots <= 32 ? on_stack : PyMem_Calloc((size_t)nslots, sizeof(PyObject *));
    if (values == NULL)
        return PyErr_NoMemory();

    while (p < end) {
        uint64_t tag, number_value;
        if (read_varint(&p, end, &tag))
            goto fallback;
        number_value = tag >> 3;
        int wire_type = (int)(tag & 7);
        if (number_value == 0 || number_value >= (uint64_t)shape->nfields)
            goto fallback;
        FieldSpec *spec = &shape->fields[number_value];
        int kind = spec->kind;
        PyObject **slot = &values[spec->slot];
        PyObject *value = NULL;
        const unsigned char *start;
        Py_ssize_t size;
        uint64_t raw;
        switch (kind) {
        case K_INT32:
        case K_INT64:
        case K_UINT64:
        case K_BOOL:
        case K_ENUM:
            if (wire_type != 0 || read_varint(&p, end, &raw))
                goto fallback;
            if (kind == K_INT32)
                value = PyLong_FromLong((long)(int32_t)raw);
            else if (kind == K_INT64)
                value = PyLong_FromLongLong((long long)(int64_t)raw);
            else if (kind == K_UINT64)
                value = PyLong_FromUnsignedLongLong((unsigned long long)raw);
            else if (kind == K_BOOL)
                value = Py_NewRef(raw ? Py_True : Py_False);
            else {
                PyObject *number = PyLong_FromLong((long)(int32_t)raw);
                if (number == NULL)
                    goto error;
                PyObject *name = PyDict_GetItemWithError(spec->extra, number);
                Py_DECREF(number);
                if (name == NULL && PyErr_Occurred())
                    goto error;
                value = Py_NewRef(name != NULL ? name : PyTuple_GET_ITEM(shape->defaults, spec->slot));
            }
            if (value == NULL)
                goto error;
            Py_XSETREF(*slot, value); /* a repeated singular scalar: the last one wins */
            break;
        case K_STRING:
        case K_REPEATED_STRING:
        case K_TIMESTAMP:
        case K_MAP:
        case K_REPEATED_MESSAGE:
        case K_MESSAGE:
            if (wire_type != 2 || read_span(&p, end, &start, &size))
                goto fallback;
            if (kind == K_MAP) {
                if (*slot == NULL && (*slot = PyDict_New()) == NULL)
                    goto error;
                int status = decode_map_entry(*slot, start, start + size, &spec->last);
                if (status < 0)
                    goto error;
                if (status > 0)
                    goto fallback;
                break;
            }
            if ((kind == K_TIMESTAMP || kind == K_MESSAGE) && *slot != NULL)
                goto fallback; /* the same singular message twice: protobuf would merge them */
            if (kind == K_STRING || kind == K_REPEATED_STRING)
                value = decode_text(start, size, &spec->last);
            else if (kind == K_TIMESTAMP)
                value = decode_timestamp(start, start + size, spec);
            else
                value = decode_message((Shape *)spec->extra, start, start + size);
            if (value == NULL)
                goto error;
            if (IS_FALLBACK(value))
                goto fallback;
            if (kind == K_STRING || kind == K_TIMESTAMP || kind == K_MESSAGE) {
                Py_XSETREF(*slot, value);
                break;
            }
            if (*slot == NULL && (*slot = PyList_New(0)) == NULL) {
                Py_DECREF(value);
                goto error;
            }
            int appended = PyList_Append(*slot, value);
            Py_DECREF(value);
            if (appended < 0)
                goto error;
            break;
        default: /* K_NONE, K_FALLBACK */
            goto fallback;
        }
    }

    if (shape->check_name != NULL) {
        PyObject *of = values[shape->check_of];
        if (of == NULL || values[shape->check_value] == NULL)
            goto fallback;
        PyObject *wanted = PyObject_GetAttr(of, shape->check_name);
        if (wanted == NULL)
            goto error;
        int same = PyObject_RichCompareBool(values[shape->check_value], wanted, Py_EQ);
        Py_DECREF(wanted);
        if (same < 0)
            goto error;
        if (!same)
            goto fallback;
    }
    /* A dict (shapes without a class), or the instance, untracked (see untracked_tuple):
     * object.__new__(cls), then each field set as object.__setattr__ would, which is what a frozen
     * dataclass's __init__ does (codec/wire.py checks that the class has no __post_init__ or
     * __new__ of its own). A slotted class's fields are stored in their slots (see slot_offsets);
     * otherwise, set one by one, they go into the instance's inline values with its class's
     * shared keys: no dict is made. */
    PyObject *target;
    if (shape->cls == Py_None)
        target = PyDict_New();
    else
        target = PyBaseObject_Type.tp_new((PyTypeObject *)shape->cls, empty_tuple, NULL);
    if (target == NULL)
        goto error;
    for (Py_ssize_t i = 0; i < nslots; i++) {
        PyObject *value = values[i];
        if (value == NULL)
            value = shape->fresh_dict[i] ? PyDict_New() : Py_NewRef(PyTuple_GET_ITEM(shape->defaults, i));
        else if (shape->repeated[i])
            value = untracked_tuple(value);
        else
            value = Py_NewRef(value);
        if (value != NULL && shape->offsets != NULL) {
            /* a new instance's slots are NULL: the reference moves into the slot */
            *(PyObject **)((char *)target + shape->offsets[i]) = value;
            continue;
        }
        PyObject *name = PyTuple_GET_ITEM(shape->names, i);
        if (value == NULL || (shape->cls == Py_None ? PyDict_SetItem(target, name, value)
                                                    : PyObject_GenericSetAttr(target, name, value)) < 0) {
            Py_XDECREF(value);
            Py_DECREF(target);
            goto error;
        }
        Py_DECREF(value);
    }
    if (shape->cls != Py_None)
        PyObject_GC_UnTrack(target);
    result = target;
    goto done;
fallback:
    result = &fallback_marker_storage;
    goto done;
error:
    result = NULL;
done:
    for (Py_ssize_t i = 0; i < nslots; i++)
        Py_XDECREF(values[i]);
    if (values != on_stack)
        PyMem_Free(values);
    return result;
}

/* ---- Shape ---------------------------------------------------------------------------------- */

static void
Shape_dealloc(Shape *self)
{
    PyObject_GC_UnTrack(self);
    Py_CLEAR(self->cls);
    Py_CLEAR(self->names);
    Py_CLEAR(self->defaults);
    Py_CLEAR(self->keep);
    Py_CLEAR(self->check_name);
    for (Py_ssize_t n = 0; self->fields != NULL && n < self->nfields; n++)
        Py_CLEAR(self->fields[n].last);
    PyMem_Free(self->fresh_dict);
    PyMem_Free(self->repeated);
    PyMem_Free(self->offsets);
    PyMem_Free(self->fields);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
Shape_traverse(Shape *self, visitproc visit, void *arg)
{
    Py_VISIT(self->cls);
    Py_VISIT(self->names);
    Py_VISIT(self->defaults);
    Py_VISIT(self->keep);
    return 0;
}

/* When every name is a slot of ``cls`` (an object member, as ``__slots__`` makes, within the
 * instance), their offsets go into shape->offsets; otherwise it stays NULL and fields are set by
 * name. The instance comes from object.__new__, so each slot starts NULL. */
static int
slot_offsets(Shape *shape, PyTypeObject *cls, PyObject *names)
{
    Py_ssize_t n = PyTuple_GET_SIZE(names);
    Py_ssize_t *offsets = PyMem_Calloc((size_t)n + 1, sizeof(Py_ssize_t));
    if (offsets == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *descr = _PyType_Lookup(cls, PyTuple_GET_ITEM(names, i)); /* borrowed, no error set */
        PyMemberDef *member = descr != NULL && Py_IS_TYPE(descr, &PyMemberDescr_Type)
                                  ? ((PyMemberDescrObject *)descr)->d_member
                                  : NULL;
        if (member == NULL || member->type != T_OBJECT_EX || (member->flags & READONLY)
            || member->offset < (Py_ssize_t)sizeof(PyObject)
            || member->offset > cls->tp_basicsize - (Py_ssize_t)sizeof(PyObject *)) {
            PyMem_Free(offsets);
            return 0;
        }
        offsets[i] = member->offset;
    }
    shape->offsets = offsets;
    return 0;
}

/* Shape(cls, names, defaults, fresh_dict, fields[, check]): ``fields`` a tuple of
 * (number, slot, kind, extra); ``check`` (value slot, slot of the object, attribute name). */
static int
Shape_init(Shape *self, PyObject *args, PyObject *kwargs)
{
    PyObject *cls, *names, *defaults, *fresh, *fields, *check = Py_None;
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs) > 0) {
        PyErr_SetString(PyExc_TypeError, "Shape takes no keyword arguments");
        return -1;
    }
    if (!PyArg_ParseTuple(args, "OO!O!O!O!|O:Shape", &cls, &PyTuple_Type, &names, &PyTuple_Type, &defaults,
                          &PyTuple_Type, &fresh, &PyTuple_Type, &fields, &check))
        return -1;
    if (self->fields != NULL) {
        PyErr_SetString(PyExc_TypeError, "a Shape is made once");
        return -1;
    }
    if (cls != Py_None && !PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "cls must be a type or None");
        return -1;
    }
    Py_ssize_t nslots = PyTuple_GET_SIZE(names);
    if (PyTuple_GET_SIZE(defaults) != nslots || PyTuple_GET_SIZE(fresh) != nslots) {
        PyErr_SetString(PyExc_ValueError, "names, defaults and fresh_dict differ in length");
        return -1;
    }
    Py_ssize_t max_number = 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(fields); i++) {
        PyObject *spec = PyTuple_GET_ITEM(fields, i);
        long number, slot, kind;
        PyObject *extra;
        if (!PyArg_ParseTuple(spec, "lllO:field", &number, &slot, &kind, &extra))
            return -1;
        if (number < 1 || number > 10000 || slot < 0 || slot >= nslots || kind < 0 || kind > K_LAST) {
            PyErr_Format(PyExc_ValueError, "bad field spec %R", spec);
            return -1;
        }
        if ((kind == K_MESSAGE || kind == K_REPEATED_MESSAGE) && !PyObject_TypeCheck(extra, &ShapeType)) {
            PyErr_Format(PyExc_TypeError, "field %ld: a message field needs a Shape", number);
            return -1;
        }
        if (kind == K_ENUM && !PyDict_Check(extra)) {
            PyErr_Format(PyExc_TypeError, "field %ld: an enum field needs a dict", number);
            return -1;
        }
        if (kind == K_TIMESTAMP && !PyDateTime_Check(extra)) {
            PyErr_Format(PyExc_TypeError, "field %ld: a timestamp field needs the epoch", number);
            return -1;
        }
        if (number > max_number)
            max_number = number;
    }
    self->nfields = max_number + 1;
    self->nslots = nslots;
    self->fields = PyMem_Calloc((size_t)self->nfields, sizeof(FieldSpec));
    self->fresh_dict = PyMem_Calloc((size_t)nslots + 1, 1);
    self->repeated = PyMem_Calloc((size_t)nslots + 1, 1);
    if (self->fields == NULL || self->fresh_dict == NULL || self->repeated == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t n = 0; n < self->nfields; n++)
        self->fields[n].kind = K_NONE;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(fields); i++) {
        PyObject *spec = PyTuple_GET_ITEM(fields, i);
        long number = PyLong_AsLong(PyTuple_GET_ITEM(spec, 0));
        FieldSpec *field = &self->fields[number];
        field->slot = (int)PyLong_AsLong(PyTuple_GET_ITEM(spec, 1));
        field->kind = (int)PyLong_AsLong(PyTuple_GET_ITEM(spec, 2));
        field->extra = PyTuple_GET_ITEM(spec, 3);
        if (field->kind == K_REPEATED_STRING || field->kind == K_REPEATED_MESSAGE)
            self->repeated[field->slot] = 1;
    }
    for (Py_ssize_t i = 0; i < nslots; i++) {
        int flag = PyObject_IsTrue(PyTuple_GET_ITEM(fresh, i));
        if (flag < 0)
            return -1;
        self->fresh_dict[i] = (char)flag;
    }
    self->check_value = self->check_of = -1;
    if (check != Py_None) {
        Py_ssize_t value_slot, of_slot;
        PyObject *name;
        if (!PyArg_ParseTuple(check, "nnU:check", &value_slot, &of_slot, &name))
            return -1;
        if (value_slot < 0 || value_slot >= nslots || of_slot < 0 || of_slot >= nslots) {
            PyErr_SetString(PyExc_ValueError, "check names a slot the shape does not have");
            return -1;
        }
        self->check_value = value_slot;
        self->check_of = of_slot;
        self->check_name = Py_NewRef(name);
    }
    if (cls != Py_None && slot_offsets(self, (PyTypeObject *)cls, names) < 0)
        return -1;
    self->cls = Py_NewRef(cls);
    self->names = Py_NewRef(names);
    self->defaults = Py_NewRef(defaults);
    self->keep = Py_NewRef(fields);
    return 0;
}

static PyObject *
Shape_get_slotted(Shape *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->offsets != NULL);
}

static PyGetSetDef Shape_getset[] = {
    {"slotted", (getter)Shape_get_slotted, NULL, "whether the fields are stored in the class's slots", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ShapeType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "fleet_actors.codec._wire.Shape",
    .tp_doc = "How to build one value from one protobuf message (codec/wire.py makes them).",
    .tp_basicsize = sizeof(Shape),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Shape_init,
    .tp_dealloc = (destructor)Shape_dealloc,
    .tp_traverse = (traverseproc)Shape_traverse,
    .tp_getset = Shape_getset,
};

/* ---- module ----------------------------------------------------------------------------------- */

static PyObject *
decode_one(Shape *shape, PyObject *data)
{
    if (!PyBytes_Check(data))
        Py_RETURN_NONE;
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(data);
    PyObject *value = decode_message(shape, p, p + PyBytes_GET_SIZE(data));
    if (value != NULL && IS_FALLBACK(value))
        Py_RETURN_NONE;
    return value;
}

static PyObject *
wire_decode(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2 || !PyObject_TypeCheck(args[0], &ShapeType)) {
        PyErr_SetString(PyExc_TypeError, "decode(shape, data)");
        return NULL;
    }
    return decode_one((Shape *)args[0], args[1]);
}

/* decode_all(shape, payloads) -> (values, missing): a list of bytes decoded, with None where
 * the protobuf runtime must decode, and how many of those there are. */
static PyObject *
wire_decode_all(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2 || !PyObject_TypeCheck(args[0], &ShapeType) || !PyList_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "decode_all(shape, list of bytes)");
        return NULL;
    }
    PyObject *payloads = args[1];
    Py_ssize_t count = PyList_GET_SIZE(payloads);
    PyObject *out = PyList_New(count);
    if (out == NULL)
        return NULL;
    Py_ssize_t missing = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (i >= PyList_GET_SIZE(payloads)) { /* shrunk by code that a check ran */
            Py_DECREF(out);
            PyErr_SetString(PyExc_RuntimeError, "decode_all: the list changed while it was decoded");
            return NULL;
        }
        PyObject *data = Py_NewRef(PyList_GET_ITEM(payloads, i));
        PyObject *value = decode_one((Shape *)args[0], data);
        Py_DECREF(data);
        if (value == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        missing += value == Py_None;
        PyList_SET_ITEM(out, i, value);
    }
    return Py_BuildValue("(Nn)", out, missing);
}

static PyMethodDef wire_methods[] = {
    {"decode_all", (PyCFunction)(void (*)(void))wire_decode_all, METH_FASTCALL,
     "decode_all(shape, payloads) -> (values, missing): None in values where decode would answer None."},
    {"decode", (PyCFunction)(void (*)(void))wire_decode, METH_FASTCALL,
     "decode(shape, data) -> the value, or None when the protobuf runtime must decode these bytes."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef wire_module = {
    PyModuleDef_HEAD_INIT, "_wire", "Compiled decoding of stored events and snapshots (codec/wire.py).", -1,
    wire_methods,
};

PyMODINIT_FUNC
PyInit__wire(void)
{
    PyDateTime_IMPORT;
    if (PyDateTimeAPI == NULL)
        return NULL;
    if (PyType_Ready(&ShapeType) < 0)
        return NULL;
    empty_tuple = PyTuple_New(0);
    if (empty_tuple == NULL)
        return NULL;
    PyObject *module = PyModule_Create(&wire_module);
    if (module == NULL)
        return NULL;
    if (PyModule_AddObjectRef(module, "Shape", (PyObject *)&ShapeType) < 0 ||
        PyModule_AddIntConstant(module, "STRING", K_STRING) < 0 ||
        PyModule_AddIntConstant(module, "INT32", K_INT32) < 0 ||
        PyModule_AddIntConstant(module, "INT64", K_INT64) < 0 ||
        PyModule_AddIntConstant(module, "UINT64", K_UINT64) < 0 ||
        PyModule_AddIntConstant(module, "BOOL", K_BOOL) < 0 ||
        PyModule_AddIntConstant(module, "ENUM", K_ENUM) < 0 ||
        PyModule_AddIntConstant(module, "TIMESTAMP", K_TIMESTAMP) < 0 ||
        PyModule_AddIntConstant(module, "REPEATED_STRING", K_REPEATED_STRING) < 0 ||
        PyModule_AddIntConstant(module, "MAP", K_MAP) < 0 ||
        PyModule_AddIntConstant(module, "REPEATED_MESSAGE", K_REPEATED_MESSAGE) < 0 ||
        PyModule_AddIntConstant(module, "MESSAGE", K_MESSAGE) < 0 ||
        PyModule_AddIntConstant(module, "FALLBACK", K_FALLBACK) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
