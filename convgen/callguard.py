"""A bound kernel's guarded entry: the checks of a direct call, in machine code.

Calling a bound kernel with x and out= of exactly the kernel's buffers must
cost little more than the kernel (issue: the tiny 5x5 layer under 2 us per
call). Done in Python, checking the two arrays' type, dtype, shape,
contiguity, writeability and overlap and reading their data addresses cost
about 1.1 us, five times the foreign call itself. The guard is a small
function, JIT-compiled per bound kernel, that reads those fields from the
NumPy array objects and either runs the kernel's stages and returns `out`,
or returns None without running them, leaving the arrays to the general
path, which converts what it can and reports what it cannot.

The guard is a Python builtin (a METH_FASTCALL function made with
PyCFunction_NewEx), not a ctypes function: a ctypes call with its argument
conversions cost 0.8 us, more than a squeeze-excite layer's whole kernel
(72->24 at one pixel: 1.2 us a call through ctypes, TFLite 0.7). It releases
the GIL while the kernel runs, as ctypes did, so that calls from several
Python threads run at once.

The fields' places in NumPy's array object (PyArrayObject_fields, public in
NumPy's C headers) are found at import by probing arrays whose values are
known, as `array.ctypes` would report them; if any does not match, there is
no guard and every call takes the general path.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from llvmlite import ir as ll

from .codegen.llvm import SHARE_COUNTER_SLOTS

# NumPy's array flags (numpy/ndarraytypes.h): what a direct call needs of x and of out
C_CONTIGUOUS, WRITEABLE = 0x0001, 0x0400

_read_word = ctypes.c_uint64.from_address
_read_int = ctypes.c_int32.from_address


@dataclass(frozen=True)
class ArrayFields:
    """Byte offsets of an ndarray object's fields."""
    type: int         # the object's type (PyObject header)
    data: int         # char *data
    ndim: int         # int nd
    shape: int        # npy_intp *dimensions
    descr: int        # PyArray_Descr *descr (the dtype object)
    flags: int        # int flags


@dataclass(frozen=True)
class Operand:
    """What the guard accepts for one array: an ndarray of exactly this dtype
    object, shape and flags."""
    dtype: np.dtype
    shape: tuple[int, ...]
    flags: int

    @property
    def nbytes(self) -> int:
        return self.dtype.itemsize * int(np.prod(self.shape))


@lru_cache(maxsize=None)
def array_fields() -> ArrayFields | None:
    """The fields' offsets on this NumPy build, or None if probing finds no
    consistent place for one of them."""
    probes = [np.empty(shape, dtype) for shape, dtype in
              [((3,), np.float32), ((2, 5), np.int8), ((1, 3, 7, 4), np.float64), ((2, 1, 3, 1, 2), np.int32)]]
    probes.append(probes[2][:, :, ::2])            # not contiguous
    probes.append(np.frombuffer(b"\0" * 12, np.int32))  # read-only
    # within the fields every NumPy since 1.20 has (up to weakreflist, ending at byte 80)
    words, ints = range(8, 80, 8), range(8, 80, 4)

    def find(candidates, value_at):
        return next((o for o in candidates if all(value_at(a, o) for a in probes)), None)

    fields = dict(
        type=find(words, lambda a, o: _read_word(id(a) + o).value == id(type(a))),
        data=find(words, lambda a, o: _read_word(id(a) + o).value == a.ctypes.data),
        ndim=find(ints, lambda a, o: _read_int(id(a) + o).value == a.ndim),
        descr=find(words, lambda a, o: _read_word(id(a) + o).value == id(a.dtype)),
        flags=find(ints, lambda a, o: _read_int(id(a) + o).value == a.flags.num),
    )
    if None in fields.values() or fields["ndim"] != fields["data"] + 8:
        return None
    # the shape pointer follows nd (the header's order); only now is it safe to read through
    fields["shape"] = fields["ndim"] + 8
    if not all(_reads_tuple(_read_word(id(a) + fields["shape"]).value, a.shape) for a in probes):
        return None
    return ArrayFields(**fields)


def _reads_tuple(address: int, values: tuple[int, ...]) -> bool:
    return address != 0 and all(_read_word(address + 8 * i).value == v for i, v in enumerate(values))


def guard_module(fields: ArrayFields, x: Operand, y: Operand, pointers: list[int], x_slot: int, y_slot: int,
                 stages: list[tuple[int, str]], scratch_slots: list[tuple[int, int]], runtime: dict[str, int]) -> str:
    """LLVM IR of `guard(x, out, threads, scratch)`, a METH_FASTCALL function:
    `PyObject *guard(PyObject *self, PyObject *const *args, Py_ssize_t nargs)`
    returning out (a new reference) when it ran the kernel, else None.
    BoundKernel calls it with two arrays and two ints (threads, scratch).

    pointers are the kernel's arguments, the bound weights' addresses, x's
    and y's slots to be filled from the arrays, and the scratch buffers'
    slots (slot, byte offset) from the calling thread's scratch area (the
    int `scratch`). stages are the run step's stage functions, in order:
    each an address and how it is called: "serial" (the pointers as
    arguments), "openmp" (GOMP_parallel on the LLVM stage's OpenMP entry,
    with the pointers and a zeroed counter per thread's share) or
    "c-openmp" (omp_set_num_threads, then the pointers as arguments).
    runtime holds the addresses of those OpenMP functions, of the Python C
    API functions the guard calls and of ndarray's type object and None."""
    i32, i64, ptr = ll.IntType(32), ll.IntType(64), ll.PointerType()
    module = ll.Module(name="guard")
    guard = ll.Function(module, ll.FunctionType(ptr, [ptr, ptr, i64]), name="guard")
    _, args, nargs = guard.args
    b = ll.IRBuilder(guard.append_basic_block("entry"))
    refuse = guard.append_basic_block("refuse")

    def call(name, result, *arguments):   # a C API function, by its address in runtime
        return b.call(_callee(b, runtime[name], ll.FunctionType(result, [a.type for a in arguments])),
                      list(arguments))

    def argument(k):
        return b.load(b.gep(args, [ll.Constant(i64, k)], source_etype=ptr), typ=ptr)

    def field(obj, offset, typ):
        return b.load(b.inttoptr(b.add(obj, ll.Constant(i64, offset)), ptr), typ=typ)

    def require(condition):
        passed = guard.append_basic_block()
        b.cbranch(condition, passed, refuse)
        b.position_at_end(passed)

    def check(obj, operand: Operand):
        require(b.icmp_unsigned("==", field(obj, fields.type, i64), ll.Constant(i64, runtime["ndarray"])))
        require(b.icmp_unsigned("==", field(obj, fields.descr, i64), ll.Constant(i64, id(operand.dtype))))
        flags = ll.Constant(i32, operand.flags)
        require(b.icmp_unsigned("==", b.and_(field(obj, fields.flags, i32), flags), flags))
        require(b.icmp_unsigned("==", field(obj, fields.ndim, i32), ll.Constant(i32, len(operand.shape))))
        shape = b.inttoptr(field(obj, fields.shape, i64), ptr)
        for axis, extent in enumerate(operand.shape):
            size = b.load(b.gep(shape, [ll.Constant(i64, axis)], source_etype=i64), typ=i64)
            require(b.icmp_unsigned("==", size, ll.Constant(i64, extent)))
        return field(obj, fields.data, i64)

    require(b.icmp_unsigned("==", nargs, ll.Constant(i64, 4)))
    out = argument(1)
    x_data, y_data = check(b.ptrtoint(argument(0), i64), x), check(b.ptrtoint(out, i64), y)
    # out must not overlap x: the general path says so
    apart = b.or_(b.icmp_unsigned(">=", x_data, b.add(y_data, ll.Constant(i64, y.nbytes))),
                  b.icmp_unsigned(">=", y_data, b.add(x_data, ll.Constant(i64, x.nbytes))))
    require(apart)
    threads = b.trunc(call("PyLong_AsSsize_t", i64, argument(2)), i32)
    scratch = call("PyLong_AsSsize_t", i64, argument(3))
    params = len(pointers)
    pointers = [ll.Constant(i64, p) for p in pointers]
    pointers[x_slot], pointers[y_slot] = x_data, y_data
    for slot, offset in scratch_slots:
        pointers[slot] = b.add(scratch, ll.Constant(i64, offset))
    state = call("PyEval_SaveThread", ptr)   # the kernel runs without the GIL
    arguments = count = None
    if any(launch == "openmp" for _, launch in stages):
        count = b.add(ll.Constant(i64, params), b.mul(b.zext(threads, i64), ll.Constant(i64, SHARE_COUNTER_SLOTS)))
        arguments = b.alloca(i64, size=count)
        for i, value in enumerate(pointers):
            b.store(value, b.gep(arguments, [ll.Constant(i64, i)], source_etype=i64))
    for kernel, launch in stages:
        if launch == "openmp":
            counters = b.gep(arguments, [ll.Constant(i64, params)], source_etype=i64)
            memset = module.declare_intrinsic("llvm.memset", [ptr, i64])
            counter_bytes = b.mul(b.sub(count, ll.Constant(i64, params)), ll.Constant(i64, 8))
            b.call(memset, [counters, ll.Constant(ll.IntType(8), 0), counter_bytes, ll.Constant(ll.IntType(1), 0)])
            parallel = ll.FunctionType(ll.VoidType(), [ptr, ptr, i32, i32])
            b.call(_callee(b, runtime["GOMP_parallel"], parallel),
                   [b.inttoptr(ll.Constant(i64, kernel), ptr), arguments, threads, ll.Constant(i32, 0)])
            continue
        if launch == "c-openmp":
            b.call(_callee(b, runtime["omp_set_num_threads"], ll.FunctionType(ll.VoidType(), [i32])), [threads])
        direct = ll.FunctionType(ll.VoidType(), [ptr] * params)
        b.call(_callee(b, kernel, direct), [b.inttoptr(p, ptr) for p in pointers])
    call("PyEval_RestoreThread", ll.VoidType(), state)
    call("Py_IncRef", ll.VoidType(), out)
    b.ret(out)
    b.position_at_end(refuse)
    none = b.inttoptr(ll.Constant(i64, runtime["None"]), ptr)
    call("Py_IncRef", ll.VoidType(), none)
    b.ret(none)
    return str(module)


def python_api() -> dict[str, int]:
    """The addresses of the Python C API functions and objects the guard uses."""
    api = {name: ctypes.cast(getattr(ctypes.pythonapi, name), ctypes.c_void_p).value
           for name in ("PyLong_AsSsize_t", "PyEval_SaveThread", "PyEval_RestoreThread", "Py_IncRef")}
    return {**api, "ndarray": id(np.ndarray), "None": id(None)}


class _MethodDef(ctypes.Structure):
    """CPython's PyMethodDef."""
    _fields_ = [("name", ctypes.c_char_p), ("method", ctypes.c_void_p), ("flags", ctypes.c_int),
                ("doc", ctypes.c_char_p)]


METH_FASTCALL = 0x0080


def builtin(address: int, name: str):
    """(a Python builtin function calling the METH_FASTCALL function at address,
    its method definition, which must live as long as the function)."""
    definition = _MethodDef(name.encode(), address, METH_FASTCALL, None)
    make = ctypes.pythonapi.PyCFunction_NewEx
    make.argtypes = [ctypes.c_void_p, ctypes.py_object, ctypes.py_object]
    make.restype = ctypes.py_object
    return make(ctypes.addressof(definition), None, None), definition


def _callee(b: ll.IRBuilder, address: int, typ: ll.FunctionType):
    """A call target known only by address: a pointer to a function of type typ."""
    return b.inttoptr(ll.Constant(ll.IntType(64), address), typ.as_pointer())

