"""A bound kernel's guarded entry: the checks of a direct call, in machine code.

Calling a bound kernel with x and out= of exactly the kernel's buffers must
cost little more than the kernel (issue: the tiny 5x5 layer under 2 us per
call). Done in Python, checking the two arrays' type, dtype, shape,
contiguity, writeability and overlap and reading their data addresses cost
about 1.1 us, five times the foreign call itself. The guard is a small
function, JIT-compiled per bound kernel, that reads those fields from the
NumPy array objects (`id(array)`) and either calls the kernel and returns 0,
or returns 1 without calling it, leaving the arrays to the general path,
which converts what it can and reports what it cannot.

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
    """LLVM IR of `i32 guard(i64 x, i64 y, i32 threads, i64 scratch)`.

    pointers are the kernel's arguments, the bound weights' addresses, x's
    and y's slots to be filled from the arrays, and the scratch buffers'
    slots (slot, byte offset) from the calling thread's scratch area.
    stages are the run step's stage functions, in order: each an address
    and how it is called: "serial" (the pointers as arguments), "openmp"
    (GOMP_parallel on the LLVM stage's OpenMP entry, with the pointers and a
    zeroed counter per thread's share) or "c-openmp" (omp_set_num_threads,
    then the pointers as arguments). runtime holds the addresses of those
    OpenMP functions and of ndarray's type object."""
    i32, i64, ptr = ll.IntType(32), ll.IntType(64), ll.PointerType()
    module = ll.Module(name="guard")
    guard = ll.Function(module, ll.FunctionType(i32, [i64, i64, i32, i64]), name="guard")
    x_object, y_object, threads, scratch = guard.args
    b = ll.IRBuilder(guard.append_basic_block("entry"))
    refuse = guard.append_basic_block("refuse")

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

    x_data, y_data = check(x_object, x), check(y_object, y)
    # out must not overlap x: the general path says so
    apart = b.or_(b.icmp_unsigned(">=", x_data, b.add(y_data, ll.Constant(i64, y.nbytes))),
                  b.icmp_unsigned(">=", y_data, b.add(x_data, ll.Constant(i64, x.nbytes))))
    require(apart)
    params = len(pointers)
    pointers = [ll.Constant(i64, p) for p in pointers]
    pointers[x_slot], pointers[y_slot] = x_data, y_data
    for slot, offset in scratch_slots:
        pointers[slot] = b.add(scratch, ll.Constant(i64, offset))
    arguments = None
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
    b.ret(ll.Constant(i32, 0))
    b.position_at_end(refuse)
    b.ret(ll.Constant(i32, 1))
    return str(module)


def _callee(b: ll.IRBuilder, address: int, typ: ll.FunctionType):
    """A call target known only by address: a pointer to a function of type typ."""
    return b.inttoptr(ll.Constant(ll.IntType(64), address), typ.as_pointer())

