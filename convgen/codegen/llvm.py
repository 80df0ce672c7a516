"""LLVM backend: a walk over the IR that builds an llvmlite module.

A program (ir.Program) becomes one module with a function per stage, each
`void name(ptr noalias x, ...)` over the program's buffers (arguments, then
workspace buffers); indices are i64, loops are
counted loops with a phi, local buffers are allocas in the entry block (LLVM's
SROA turns them into registers). Loop kinds:

- unrolled: the body is emitted once per iteration with the index a constant;
- vectorized: the body is emitted once on <lanes x T> vectors: contiguous
  accesses become vector loads and stores, others are gathered lane by lane,
  `a + b * c` becomes llvm.fma, and a condition that differs between lanes
  becomes a lane mask: contiguous accesses under it become llvm.masked.load
  and llvm.masked.store (a guarded tail), or, in the kernel's own tile,
  whole-vector accesses blended with the mask so the tile stays in
  registers (not blended where no read sees the masked-off lanes,
  `masked_lanes_unread`); gathered lanes that are masked off read a safe
  address and store nothing;
- transposed (marked by the pass of that name, over a vectorized copy that
  reads across rows of a block: a register tile written back from channel
  vectors to columns): the block's rows are loaded as vectors and
  transposed with log2(P) rounds of two-vector shuffles (`transposed_copy`)
  instead of being gathered element by element;
- parallel (the whole body of a stage function, as the share-parallel-work
  pass leaves it): the function takes two more arguments, `lo` and `hi`,
  and runs that loop from lo to hi. A second function, `<name>.omp(ptr args)`, is
  the body of an OpenMP parallel region (libgomp's GOMP_parallel calls it
  on every thread): it runs the thread's contiguous share of the range, then
  takes what is left of the others' shares, one iteration at a time
  (`_emit_openmp_entry`).

`LLVMBackend` is the backend interface (codegen/__init__.py): emit the
text, JIT-compile it for the host (native.py) and launch it.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

from llvmlite import ir as ll

from .. import ir
from ..errors import CodegenError, ConvgenError
from ..native import jit_functions, jit_object, openmp
from ..target import Target
from ..passes import next_power_of_two, transposable_read
from . import refuse_gpu

I1 = ll.IntType(1)
I8 = ll.IntType(8)
I32 = ll.IntType(32)
I64 = ll.IntType(64)
F32 = ll.FloatType()
_TYPES = {ir.INDEX: I64, ir.FLOAT32: F32, ir.BOOL: I1, ir.INT8: I8, ir.INT32: I32}
_BYTES = {ir.FLOAT32: 4, ir.INT8: 1, ir.INT32: 4, ir.INDEX: 8}
_INT_OPS = {"+": "add", "-": "sub", "*": "mul"}
_FLOAT_OPS = {"+": "fadd", "-": "fsub", "*": "fmul", "/": "fdiv"}
PARALLEL_BOUNDS = ("lo", "hi")
SHARE_COUNTER_SLOTS = 8   # 64-bit slots from one share's counter to the next: a cache line


def emit_llvm(func: ir.Func | ir.Program, target: Target) -> str:
    """The kernel as LLVM IR text, for the target's triple: a function per
    stage of its program (a Func is split first)."""
    program = func if isinstance(func, ir.Program) else ir.split(func)
    module = ll.Module(name=program.name)
    module.triple = target.triple
    for stage in program.stages:
        emitter = _LLVMEmitter(module, stage)
        if emitter.parallel is not None:
            _emit_openmp_entry(module, emitter.function, len(stage.params), emitter.parallel.extent)
    return str(module)


def openmp_entry_name(func: ir.Func) -> str:
    return f"{func.name}.omp"


def _emit_openmp_entry(module: ll.Module, kernel: ll.Function, params: int, extent: int) -> None:
    """void <name>.omp(ptr args): this thread's share of 0..extent, then what
    is left of the others' shares, one iteration at a time, calling the kernel
    on each with the pointers in args[0..params).

    Shares are contiguous, as a static split's (each thread's rows and the
    input they read stay its own), but taken through a counter per share
    (args[params + SHARE_COUNTER_SLOTS * share], zeroed by the caller): a
    thread that finishes early takes iterations from the others' shares, so
    one that loses its CPU for a while does less, not the whole layer late."""
    ptr = ll.PointerType()
    entry = ll.Function(module, ll.FunctionType(ll.VoidType(), [ptr]), name=f"{kernel.name}.omp")
    ask = {name: module.globals.get(name) or ll.Function(module, ll.FunctionType(I32, []), name=name)
           for name in ("omp_get_thread_num", "omp_get_num_threads")}   # declared once per module
    start = entry.append_basic_block("entry")
    share_block, take_block, run_block, next_block, done_block = (
        entry.append_basic_block(name) for name in ("share", "take", "run", "next", "done"))
    b = ll.IRBuilder(start)
    thread = b.sext(b.call(ask["omp_get_thread_num"], []), I64)
    threads = b.sext(b.call(ask["omp_get_num_threads"], []), I64)
    pointers = [b.load(b.gep(entry.args[0], [ll.Constant(I64, i)], source_etype=ptr), typ=ptr)
                for i in range(params)]
    total, one = ll.Constant(I64, extent), ll.Constant(I64, 1)
    b.branch(share_block)

    b.position_at_end(share_block)   # visit share (thread + k) % threads, k = 0, 1, ...
    k = b.phi(I64, name="k")
    k.add_incoming(ll.Constant(I64, 0), start)
    share = b.urem(b.add(thread, k), threads)
    first = b.udiv(b.mul(total, share), threads)
    size = b.sub(b.udiv(b.mul(total, b.add(share, one)), threads), first)
    slot = b.add(ll.Constant(I64, params), b.mul(share, ll.Constant(I64, SHARE_COUNTER_SLOTS)))
    counter = b.gep(entry.args[0], [slot], source_etype=I64)
    b.branch(take_block)

    b.position_at_end(take_block)
    taken = b.atomic_rmw("add", counter, one, "monotonic")
    b.cbranch(b.icmp_unsigned("<", taken, size), run_block, next_block)

    b.position_at_end(run_block)
    lo = b.add(first, taken)
    b.call(kernel, pointers + [lo, b.add(lo, one)])
    b.branch(take_block)

    b.position_at_end(next_block)
    k_next = b.add(k, one)
    k.add_incoming(k_next, next_block)
    b.cbranch(b.icmp_unsigned("<", k_next, threads), share_block, done_block)

    b.position_at_end(done_block)
    b.ret_void()


def parallel_loop(func: ir.Func) -> ir.Loop | None:
    """A stage function's parallel loop, whose range the caller passes as (lo, hi):
    its whole body, as the share-parallel-work pass leaves it (passes.py).
    One parallel region runs the function, each thread on its share of that
    range; anything else with a parallel loop is refused."""
    loops = [loop for loop in ir.find_all(func.body, ir.Loop) if loop.kind == "parallel"]
    if not loops or (len(loops) == 1 and func.body is loops[0]):
        return loops[0] if loops else None
    raise CodegenError(f"LLVM backend: {func.name}: parallel loops {', '.join(l.var.name for l in loops)} are not "
                       f"one loop around the whole stage function (share-parallel-work makes them one where they "
                       f"have one extent and none holds another); it runs one parallel range per stage function "
                       f"(the C backend runs each loop on its own): keep one loop of each nest parallel")


def masked_lanes_unread(alloc: ir.Allocate) -> bool:
    """Whether a guarded store into the allocated tile may write its masked-off
    lanes as well: every lane-masked store to it is guarded by the same
    condition G of the element's own position (its indices, and loops outside
    the allocation), and every read of it is under G. A masked-off lane's
    element then fails G and is never read, so a guarded FMA into the tile
    needs no blend with the old value (the masked last block of channel
    vectors, NCHW 3x3 58->58 at 28x28: 179 -> 210 GFLOP/s, two threads)."""
    name = alloc.buffer.name
    inner = {loop.var.name for loop in ir.find_all(alloc.body, ir.Loop)}
    guards, reads = set(), []

    def at_position(cond: ir.Expr, indices) -> ir.Expr | None:
        """cond with the indices' variables named by axis; None where it depends on anything else inside."""
        if any(not isinstance(i, (ir.Var, ir.IntImm)) for i in indices):
            return None
        names = [i.name for i in indices if isinstance(i, ir.Var)]
        if len(names) != len(set(names)):
            return None
        cond = ir.substitute(cond, {i.name: ir.Var(f"#{k}") for k, i in enumerate(indices) if isinstance(i, ir.Var)})
        return None if ir.free_vars(cond) & inner else cond

    def visit(node: ir.Stmt, conds: tuple, lane: str | None) -> bool:
        if isinstance(node, ir.Seq):
            return all(visit(child, conds, lane) for child in node.body)
        if isinstance(node, ir.Loop):
            return visit(node.body, conds, node.var.name if node.kind == "vectorized" else lane)
        if isinstance(node, ir.If):
            reads.extend((load.indices, conds) for load in ir.find_all(node.cond, ir.Load) if load.buffer.name == name)
            if node.orelse is not None and lane in ir.free_vars(node.cond) and ir.find_all(node.orelse, ir.Store):
                return False   # a masked else: not followed here
            return visit(node.then, conds + (node.cond,), lane) and (
                node.orelse is None or visit(node.orelse, conds, lane))
        if isinstance(node, ir.Allocate):
            return visit(node.body, conds, lane)
        if isinstance(node, ir.Store):
            reads.extend((load.indices, conds) for load in ir.find_all(node, ir.Load) if load.buffer.name == name)
            if node.buffer.name == name and lane is not None:
                masks = [c for c in conds if lane in ir.free_vars(c)]
                if masks:
                    guard = [at_position(c, node.indices) for c in masks]
                    if None in guard:
                        return False
                    guards.add(frozenset(guard))
            return True
        return not any(load.buffer.name == name for load in ir.find_all(node, ir.Load))

    if not visit(alloc.body, (), None) or len(guards) != 1:
        return False
    (guard,) = guards
    for indices, conds in reads:
        if not guard <= {at_position(c, indices) for c in conds}:
            return False
    return True


class _LLVMEmitter:
    def __init__(self, module: ll.Module, func: ir.Func):
        self.module = module
        self.parallel = parallel_loop(func)
        arg_types = [ll.PointerType() for _ in func.params] + ([I64, I64] if self.parallel else [])
        self.function = ll.Function(module, ll.FunctionType(ll.VoidType(), arg_types), name=func.name)
        self.function.attributes.add("nounwind")
        self.pointers: dict[str, ll.Value] = {}
        self.locals: set[str] = set()      # buffers allocated in the kernel (stack tiles)
        self.unblended: set[str] = set()   # of those, the tiles whose masked-off lanes no read sees
        for arg, buffer in zip(self.function.args, func.params):
            arg.name = buffer.name
            arg.add_attribute("noalias")  # parameters never overlap (the runtime checks)
            self.pointers[buffer.name] = arg
        if self.parallel:
            for arg, name in zip(self.function.args[len(func.params):], PARALLEL_BOUNDS):
                arg.name = name
        for table in ir.constant_buffers(func.body):
            self.pointers[table.name] = self.constant_table(func.name, table)
        entry = self.function.append_basic_block("entry")
        self.allocas = ll.IRBuilder(entry)  # allocas go first in the entry block
        body = self.function.append_basic_block("body")
        self.allocas.branch(body)
        self.allocas.position_at_start(entry)
        self.builder = ll.IRBuilder(body)
        self.vars: dict[str, ll.Value] = {}
        self.ranges: ir.Ranges = {}
        self.lane_var: str | None = None   # the vectorized loop's variable, while inside it
        self.lanes = 0
        self.mask: ll.Value | None = None  # lanes enabled by enclosing lane-dependent conditions
        self.transposed: tuple[str, ll.Value] | None = None  # (buffer, this iteration's column) in a transpose
        self.stmt(func.body)
        self.builder.ret_void()

    def constant_table(self, func_name: str, buffer: ir.Buffer) -> ll.GlobalVariable:
        """A table the kernel reads, as an internal constant global."""
        array = ll.ArrayType(_TYPES[buffer.dtype], buffer.size)
        table = ll.GlobalVariable(self.module, array, name=f"{func_name}.{buffer.name}")
        table.global_constant = True
        table.linkage = "internal"
        table.initializer = ll.Constant(array, list(buffer.values))
        return table

    # -- statements ---------------------------------------------------------
    def stmt(self, node: ir.Stmt) -> None:
        method = getattr(self, "stmt_" + type(node).__name__, None)
        if method is None:
            raise CodegenError(f"LLVM backend: cannot emit statement {type(node).__name__}")
        method(node)

    def stmt_Seq(self, node: ir.Seq) -> None:
        for s in node.body:
            self.stmt(s)

    def stmt_Loop(self, node: ir.Loop) -> None:
        refuse_gpu("LLVM", node)
        if self.lane_var is not None:
            raise CodegenError(f"LLVM backend: loop {node.var.name} inside vectorized loop {self.lane_var}")
        name = node.var.name
        self.ranges[name] = (0, node.extent - 1)
        if node.kind == "transposed":
            self.transposed_copy(node, transposable_read(node))
        elif node.kind == "unrolled":
            for k in range(node.extent):
                self.stmt(ir.simplify(ir.substitute(node.body, {name: ir.IntImm(k)}), self.ranges))
        elif node.kind == "vectorized":
            self.lane_var, self.lanes = name, node.extent
            self.stmt(node.body)
            self.lane_var, self.lanes = None, 0
        else:
            self.counted_loop(node)
        del self.ranges[name]

    def counted_loop(self, node: ir.Loop) -> None:
        name = node.var.name
        start, stop = ll.Constant(I64, 0), ll.Constant(I64, node.extent)
        if node.kind == "parallel":
            start, stop = self.function.args[-2], self.function.args[-1]
        b = self.builder
        before = b.block
        header = self.function.append_basic_block(f"{name}.header")
        body = self.function.append_basic_block(f"{name}.body")
        done = self.function.append_basic_block(f"{name}.done")
        b.branch(header)
        b.position_at_end(header)
        index = b.phi(I64, name=name)
        index.add_incoming(start, before)
        b.cbranch(b.icmp_signed("<", index, stop), body, done)
        b.position_at_end(body)
        self.vars[name] = index
        self.stmt(node.body)
        del self.vars[name]
        index.add_incoming(b.add(index, ll.Constant(I64, 1), name=f"{name}.next", flags=("nsw",)), b.block)
        b.branch(header)
        b.position_at_end(done)

    def transposed_copy(self, node: ir.Loop, read: ir.Load) -> None:
        """Emit `node` (iterations l) over a vectorized copy (lanes c) that reads
        read.buffer[base + c * stride + l]: load the block's rows (fixed c) as
        vectors, transpose them, and hand column l to the copy's l-th emission."""
        inner: ir.Loop = node.body
        name, lane = node.var.name, inner.var.name
        offset = ir.flat_index(read.buffer, read.indices)
        element = _TYPES[read.dtype]
        size = next_power_of_two(max(node.extent, inner.extent))
        rows = []
        for c in range(inner.extent):
            start = ir.simplify(ir.substitute(offset, {name: ir.IntImm(0), lane: ir.IntImm(c)}), self.ranges)
            row = self.builder.load(self.pointer(read.buffer, self.expr(start)),
                                    typ=ll.VectorType(element, node.extent))
            row.align = _BYTES[read.dtype]
            rows.append(self.resize(row, node.extent, size))
        poison = ll.Constant(ll.VectorType(element, size), ll.Undefined)
        columns = self.transpose(rows + [poison] * (size - inner.extent), size)
        for k in range(node.extent):
            self.transposed = (read.buffer.name, self.resize(columns[k], size, inner.extent))
            self.stmt(ir.simplify(ir.substitute(inner, {name: ir.IntImm(k)}), self.ranges))
        self.transposed = None

    def resize(self, vector: ll.Value, lanes: int, new_lanes: int) -> ll.Value:
        """The first new_lanes lanes of a vector of `lanes`, poison past its end."""
        mask = [k if k < lanes else lanes for k in range(new_lanes)]
        return self.builder.shuffle_vector(vector, ll.Constant(vector.type, ll.Undefined),
                                           ll.Constant(ll.VectorType(I32, new_lanes), mask))

    def transpose(self, rows: list[ll.Value], size: int) -> list[ll.Value]:
        """size x size transpose of `size` vectors: in each round, rows p and p + h
        swap their h-wide off-diagonal blocks; after rounds h = size/2 .. 1 row i is column i."""
        h = size // 2
        while h >= 1:
            swapped = list(rows)
            for p in (p for p in range(size) if not p & h):
                for out, mask in ((p, [j if not j & h else size + j - h for j in range(size)]),
                                  (p + h, [j + h if not j & h else size + j for j in range(size)])):
                    swapped[out] = self.builder.shuffle_vector(rows[p], rows[p + h],
                                                               ll.Constant(ll.VectorType(I32, size), mask))
            rows, h = swapped, h // 2
        return rows

    def stmt_Store(self, node: ir.Store) -> None:
        offset = self.offset(node.buffer, node.indices, masked_only=False)
        value = self.expr(node.value)
        if self.lane_var is None:
            self.builder.store(value, self.pointer(node.buffer, self.expr(offset)))
        elif self.lane_var not in ir.free_vars(offset):
            raise CodegenError(f"LLVM backend: store to {node.buffer.name} does not depend on vectorized "
                               f"loop {self.lane_var}: lanes would collide")
        elif self.contiguous(offset):
            base = self.expr(ir.substitute(offset, {self.lane_var: ir.IntImm(0)}))
            pointer, vector, align = self.pointer(node.buffer, base), self.broadcast(value), _BYTES[node.buffer.dtype]
            if self.mask is not None and not self.within_local(node.buffer, offset):
                # a guarded tail: one masked store, lanes past the end untouched
                self.builder.call(self.masked_memory("store", vector.type),
                                  [vector, pointer, ll.Constant(I32, align), self.mask])
                return
            if self.mask is not None and node.buffer.name not in self.unblended:
                # a guarded tile in the kernel's own buffer: blend and store the whole vector, which
                # LLVM keeps in a register (a masked store would pin the tile to the stack)
                old = self.builder.load(pointer, typ=vector.type)
                old.align = align
                vector = self.builder.select(self.mask, vector, old)
            store = self.builder.store(vector, pointer)
            store.align = align
        else:
            self.store_lanes(node.buffer, offset, self.broadcast(value))

    def store_lanes(self, buffer: ir.Buffer, offset: ir.Expr, value: ll.Value) -> None:
        """Scatter lane by lane, skipping lanes the mask turns off."""
        b = self.builder
        for k in range(self.lanes):
            lane_offset = self.expr(ir.simplify(ir.substitute(offset, {self.lane_var: ir.IntImm(k)}), self.ranges))
            element = b.extract_element(value, ll.Constant(I32, k))
            if self.mask is None:
                b.store(element, self.pointer(buffer, lane_offset))
                continue
            with b.if_then(b.extract_element(self.mask, ll.Constant(I32, k))):
                b.store(element, self.pointer(buffer, lane_offset))

    def stmt_If(self, node: ir.If) -> None:
        if self.lane_var is not None and self.lane_var in ir.free_vars(node.cond):
            self.masked_if(node)
            return
        cond = self.expr(node.cond)
        if node.orelse is None:
            with self.builder.if_then(cond):
                self.stmt(node.then)
            return
        with self.builder.if_else(cond) as (then, orelse):
            with then:
                self.stmt(node.then)
            with orelse:
                self.stmt(node.orelse)

    def masked_if(self, node: ir.If) -> None:
        b, outer = self.builder, self.mask
        cond = self.expr(node.cond)
        self.mask = cond if outer is None else b.and_(outer, cond)
        self.stmt(node.then)
        if node.orelse is not None:
            negated = b.xor(cond, ll.Constant(cond.type, [1] * self.lanes))
            self.mask = negated if outer is None else b.and_(outer, negated)
            self.stmt(node.orelse)
        self.mask = outer

    def stmt_Barrier(self, node: ir.Barrier) -> None:
        refuse_gpu("LLVM", node)

    def stmt_Allocate(self, node: ir.Allocate) -> None:
        refuse_gpu("LLVM", node)
        if self.lane_var is not None:
            raise CodegenError(f"LLVM backend: allocation of {node.buffer.name} inside vectorized loop {self.lane_var}")
        buffer = node.buffer
        slot = self.allocas.alloca(_TYPES[buffer.dtype], size=ll.Constant(I64, buffer.size), name=buffer.name)
        # llvmlite types an alloca as float*; as an opaque ptr (LLVM's only kind now) it takes vector stores too
        slot.type = ll.PointerType()
        self.pointers[buffer.name] = slot
        self.locals.add(buffer.name)
        if masked_lanes_unread(node):
            self.unblended.add(buffer.name)
        self.stmt(node.body)
        self.locals.discard(buffer.name)
        self.unblended.discard(buffer.name)
        del self.pointers[buffer.name]

    # -- memory -------------------------------------------------------------
    def pointer(self, buffer: ir.Buffer, offset: ll.Value) -> ll.Value:
        if buffer.name not in self.pointers:
            raise CodegenError(f"LLVM backend: buffer {buffer.name} is neither a parameter nor allocated")
        return self.builder.gep(self.pointers[buffer.name], [offset], inbounds=True,
                                source_etype=_TYPES[buffer.dtype])

    def offset(self, buffer: ir.Buffer, indices, masked_only: bool = True) -> ir.Expr:
        """The element offset of buffer[indices]; for a store, or a load under
        a lane mask, simplified with the loops' ranges where that shows it
        contiguous (a channel block's lanes in a blocked layout: (c.o * 16 +
        lane) % 16 is the lane), so that it is one vector access: a masked
        block's lanes gathered each read through a select that LLVM cannot
        merge (NHWC 116->116 1x1: 5 -> 58 GFLOP/s). An unmasked load keeps
        the gathered form, whose lanes LLVM merges into a vector load: the
        simplified form there made LLVM spill the 3x3 64 tile (0.36x)."""
        offset = ir.flat_index(buffer, indices)
        if (masked_only and self.mask is None) or self.lane_var is None or self.contiguous(offset):
            return offset
        simpler = ir.simplify(offset, self.ranges)
        return simpler if self.contiguous(simpler) else offset

    def contiguous(self, offset: ir.Expr) -> bool:
        """Whether consecutive lanes address consecutive elements."""
        return ir.linear_coefficient(offset, self.lane_var) == 1

    def load(self, node: ir.Load) -> ll.Value:
        offset = self.offset(node.buffer, node.indices)
        element = _TYPES[node.dtype]
        if self.transposed is not None and self.transposed[0] == node.buffer.name \
                and self.lane_var in ir.free_vars(offset):
            return self.transposed[1]
        if self.lane_var is None or self.lane_var not in ir.free_vars(offset):
            index = self.expr(offset)
            if self.mask is not None:  # no lane may need it: read a safe address instead
                any_lane = self.builder.icmp_unsigned(
                    "!=", self.builder.bitcast(self.mask, ll.IntType(self.lanes)), ll.Constant(ll.IntType(self.lanes), 0))
                index = self.builder.select(any_lane, index, ll.Constant(I64, 0))
            return self.builder.load(self.pointer(node.buffer, index), typ=element)
        if self.contiguous(offset):
            base = self.expr(ir.substitute(offset, {self.lane_var: ir.IntImm(0)}))
            vector_type = ll.VectorType(element, self.lanes)
            if self.mask is not None and not self.within_local(node.buffer, offset):
                # a guarded tail: masked-off lanes read nothing, so cannot fault
                return self.builder.call(self.masked_memory("load", vector_type), [
                    self.pointer(node.buffer, base), ll.Constant(I32, _BYTES[node.dtype]), self.mask,
                    ll.Constant(vector_type, None)])
            value = self.builder.load(self.pointer(node.buffer, base), typ=vector_type)
            value.align = _BYTES[node.dtype]
            return value
        return self.gather(node.buffer, offset, element)

    def gather(self, buffer: ir.Buffer, offset: ir.Expr, element: ll.Type) -> ll.Value:
        """Load lane by lane; a masked-off lane reads element 0, which always exists.
        An offset linear in the lane (a channel vector of NCHW) is computed once."""
        b = self.builder
        vector = ll.Constant(ll.VectorType(element, self.lanes), ll.Undefined)
        stride = ir.linear_coefficient(offset, self.lane_var)
        base = self.expr(ir.substitute(offset, {self.lane_var: ir.IntImm(0)})) if stride is not None else None
        if base is not None and self.mask is None and stride in (2, 3, 4):
            return self.strided(buffer, base, stride, element)
        for k in range(self.lanes):
            if base is not None:
                index = b.add(base, ll.Constant(I64, k * stride)) if k else base
            else:
                index = self.expr(ir.simplify(ir.substitute(offset, {self.lane_var: ir.IntImm(k)}), self.ranges))
            if self.mask is not None:
                index = b.select(b.extract_element(self.mask, ll.Constant(I32, k)), index, ll.Constant(I64, 0))
            vector = b.insert_element(vector, b.load(self.pointer(buffer, index), typ=element), ll.Constant(I32, k))
        return vector

    def strided(self, buffer: ir.Buffer, base: ll.Value, stride: int, element: ll.Type) -> ll.Value:
        """Lanes `stride` elements apart (a stride-2 window's columns): one load of
        the span from the first lane's element to the last's, then a shuffle that
        keeps every stride-th, where element-by-element loads and inserts cost
        a few instructions a lane (NCHW maxpool 2x2 at 112x112, one thread: 133 -> 98 us).
        The load ends at the last lane's element, so it reads nothing past it."""
        span = (self.lanes - 1) * stride + 1
        value = self.builder.load(self.pointer(buffer, base), typ=ll.VectorType(element, span))
        value.align = _BYTES[buffer.dtype]
        keep = ll.Constant(ll.VectorType(I32, self.lanes), [k * stride for k in range(self.lanes)])
        return self.builder.shuffle_vector(value, ll.Constant(value.type, ll.Undefined), keep)

    # -- expressions --------------------------------------------------------
    def expr(self, node: ir.Expr) -> ll.Value:
        if isinstance(node, ir.IntImm):
            return ll.Constant(_TYPES[node.dtype], node.value)
        if isinstance(node, ir.Cast):
            value = self.expr(node.value)
            target = self.like(value, _TYPES[node.type])
            widen = node.type == ir.INT32
            return self.builder.sext(value, target) if widen else self.builder.trunc(value, target)
        if isinstance(node, ir.BoolImm):
            return ll.Constant(I1, int(node.value))
        if isinstance(node, ir.FloatImm):
            return ll.Constant(_TYPES[node.dtype], node.value)
        if isinstance(node, ir.Var):
            if node.name == self.lane_var:
                return ll.Constant(ll.VectorType(I64, self.lanes), list(range(self.lanes)))
            if node.name not in self.vars:
                raise CodegenError(f"LLVM backend: variable {node.name} is used outside its loop")
            return self.vars[node.name]
        if isinstance(node, ir.Load):
            return self.load(node)
        if isinstance(node, ir.Select):
            cond, a, b = self.expr(node.cond), self.expr(node.true_value), self.expr(node.false_value)
            if isinstance(cond.type, ll.VectorType) or self.is_vector(a) or self.is_vector(b):
                a, b = self.broadcast(a), self.broadcast(b)
            return self.builder.select(cond, a, b)
        if isinstance(node, ir.Call):
            return self.call(node)
        if isinstance(node, ir.BinOp):
            return self.binop(node)
        raise CodegenError(f"LLVM backend: cannot emit expression {type(node).__name__}")

    def call(self, node: ir.Call) -> ll.Value:
        if node.name == "requantize":
            return self.requantize(*(self.expr(a) for a in node.args))
        if node.name == "divide_round":
            return self.divide_round(*(self.expr(a) for a in node.args))
        index, size = node.args
        if node.name == "clamp":
            return self.expr(ir.minimum(ir.maximum(index, 0), size - 1))
        if node.name == "in_range":
            return self.expr(ir.all_of(ir.le(0, index), ir.lt(index, size)))
        if node.name == "reflect":
            mirrored = ir.Select(ir.lt(index, 0), -index, ir.Select(ir.lt(index, size), index, (size + size - 2) - index))
            return self.expr(mirrored)
        raise CodegenError(f"LLVM backend: no lowering for intrinsic {node.name}")

    def like(self, value: ll.Value, element: ll.Type) -> ll.Type:
        """element, or a vector of it when value is a vector."""
        return ll.VectorType(element, value.type.count) if self.is_vector(value) else element

    def constant(self, like: ll.Value, element: ll.Type, number: int) -> ll.Value:
        """A constant of element type, broadcast when `like` is a vector."""
        value = ll.Constant(element, number)
        return self.broadcast(value) if self.is_vector(like) else value

    def requantize(self, acc: ll.Value, multiplier: ll.Value, shift: ll.Value) -> ll.Value:
        """TFLite's MultiplyByQuantizedMultiplier on int32 (or int32 vectors), as the
        C backend's convgen_requantize: a saturating rounding doubling high
        multiply in 64 bits, then a rounding right shift, half away from zero."""
        b = self.builder
        if any(self.is_vector(v) for v in (acc, multiplier, shift)):
            acc, multiplier, shift = (self.broadcast(v) for v in (acc, multiplier, shift))
        i32, i64 = acc.type, self.like(acc, I64)
        c32 = lambda n: self.constant(acc, I32, n)
        c64 = lambda n: self.constant(acc, I64, n)
        positive = b.icmp_signed(">", shift, c32(0))
        left, right = b.select(positive, shift, c32(0)), b.select(positive, c32(0), b.sub(c32(0), shift))
        a = b.trunc(b.shl(b.sext(acc, i64), b.sext(left, i64)), i32)
        product = b.mul(b.sext(a, i64), b.sext(multiplier, i64))
        total = b.add(product, b.select(b.icmp_signed(">=", product, c64(0)), c64(1 << 30), c64(1 - (1 << 30))))
        truncated = b.select(b.icmp_signed(">=", total, c64(0)), b.ashr(total, c64(31)),
                             b.sub(c64(0), b.ashr(b.sub(c64(0), total), c64(31))))
        both_min = b.and_(b.icmp_signed("==", a, c32(-(2**31))), b.icmp_signed("==", multiplier, c32(-(2**31))))
        high = b.select(both_min, c32(2**31 - 1), b.trunc(truncated, i32))
        mask = b.sub(b.shl(c32(1), right), c32(1))
        threshold = b.add(b.ashr(mask, c32(1)), b.zext(b.icmp_signed("<", high, c32(0)), i32))
        round_up = b.zext(b.icmp_signed(">", b.and_(high, mask), threshold), i32)
        return b.add(b.ashr(high, right), round_up)

    def divide_round(self, a: ll.Value, n: ll.Value) -> ll.Value:
        """a / n (n > 0) rounded half away from zero, as TFLite's average pool."""
        b = self.builder
        if self.is_vector(a) or self.is_vector(n):
            a, n = self.broadcast(a), self.broadcast(n)
            # lanes a condition masks off read 0 for n (masked loads of a count table): make them divide
            # by 1, since x86 traps on an integer division by zero even in a lane whose result is unused
            n = b.select(b.icmp_signed("==", n, self.constant(n, I32, 0)), self.constant(n, I32, 1), n)
        half = b.sdiv(n, self.constant(a, I32, 2))
        toward = b.select(b.icmp_signed(">", a, self.constant(a, I32, 0)), half, b.sub(self.constant(a, I32, 0), half))
        return b.sdiv(b.add(a, toward), n)

    def is_vector(self, value: ll.Value) -> bool:
        return isinstance(value.type, ll.VectorType)

    def broadcast(self, value: ll.Value) -> ll.Value:
        if self.is_vector(value) or not self.lanes:
            return value
        vector_type = ll.VectorType(value.type, self.lanes)
        single = self.builder.insert_element(ll.Constant(vector_type, ll.Undefined), value, ll.Constant(I32, 0))
        return self.builder.shuffle_vector(single, ll.Constant(vector_type, ll.Undefined),
                                           ll.Constant(ll.VectorType(I32, self.lanes), [0] * self.lanes))

    def intrinsic(self, name: str, value_type: ll.Type, arity: int) -> ll.Function:
        """A float intrinsic by its overloaded name (llvmlite's declare_intrinsic knows no vectors)."""
        suffix = f"v{value_type.count}f32" if isinstance(value_type, ll.VectorType) else "f32"
        full = f"llvm.{name}.{suffix}"
        if full in self.module.globals:
            return self.module.globals[full]
        return ll.Function(self.module, ll.FunctionType(value_type, [value_type] * arity), name=full)

    def within_local(self, buffer: ir.Buffer, offset: ir.Expr) -> bool:
        """Whether every lane of offset, enabled or not, lies in a buffer the kernel
        allocated itself, so that a guarded access may touch the whole vector."""
        if buffer.name not in self.locals:
            return False
        span = ir.bounds(offset, self.ranges)
        return span is not None and 0 <= span[0] and span[1] < buffer.size

    def masked_memory(self, kind: str, vector_type: ll.VectorType) -> ll.Function:
        """llvm.masked.load / llvm.masked.store for vector_type, declared once."""
        element = "f32" if vector_type.element == F32 else f"i{vector_type.element.width}"
        full = f"llvm.masked.{kind}.v{vector_type.count}{element}.p0"
        if full in self.module.globals:
            return self.module.globals[full]
        mask = ll.VectorType(I1, vector_type.count)
        signature = (ll.FunctionType(vector_type, [ll.PointerType(), I32, mask, vector_type]) if kind == "load"
                     else ll.FunctionType(ll.VoidType(), [vector_type, ll.PointerType(), I32, mask]))
        return ll.Function(self.module, signature, name=full)

    def binop(self, node: ir.BinOp) -> ll.Value:
        if self.lane_var is not None and node.op == "+" and node.dtype == ir.FLOAT32:
            fused = self.fused_multiply_add(node)
            if fused is not None:
                return fused
        b = self.builder
        x, y = self.expr(node.a), self.expr(node.b)
        if self.is_vector(x) or self.is_vector(y):
            x, y = self.broadcast(x), self.broadcast(y)
        op, dtype = node.op, node.a.dtype
        if op == "&&":
            return b.and_(x, y)
        if op == "||":
            return b.or_(x, y)
        if dtype in ir.INT_TYPES:
            if op in _INT_OPS:
                return getattr(b, _INT_OPS[op])(x, y)
            if op in ir.COMPARE_OPS:
                return b.icmp_signed(op, x, y)
            if op in ("min", "max"):
                return b.select(b.icmp_signed("<" if op == "min" else ">", x, y), x, y)
            self.require_nonnegative(node)
            return b.sdiv(x, y) if op == "//" else b.srem(x, y)
        if op in _FLOAT_OPS:
            return getattr(b, _FLOAT_OPS[op])(x, y)
        if op in ir.COMPARE_OPS:
            return b.fcmp_ordered(op, x, y)
        if op in ("min", "max"):
            return b.call(self.intrinsic(f"{op}num", x.type, 2), [x, y])
        raise CodegenError(f"LLVM backend: cannot emit {op!r} on {dtype}")

    def fused_multiply_add(self, node: ir.BinOp) -> ll.Value | None:
        """a + b * c (or b * c + a) on vectors as one llvm.fma: the target's FMA instructions."""
        if self.lane_var not in ir.free_vars(node):
            return None
        for addend, product in ((node.a, node.b), (node.b, node.a)):
            if isinstance(product, ir.BinOp) and product.op == "*":
                values = [self.broadcast(self.expr(e)) for e in (product.a, product.b, addend)]
                return self.builder.call(self.intrinsic("fma", values[0].type, 3), values)
        return None

    def require_nonnegative(self, node: ir.BinOp) -> None:
        if not ir.truncation_is_floor(node, self.ranges):
            raise CodegenError(f"LLVM backend: cannot prove {ir.format_expr(node)} has a non-negative "
                               f"dividend and a positive divisor")


# ---------------------------------------------------------------------------
# The backend interface
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class LLVMModule:
    """An emitted program: LLVM IR text, and for each stage the function a
    call starts (the stage's function, or for a parallel loop its OpenMP
    entry) and whether it is that entry."""

    name: str
    source: str
    entries: tuple[tuple[str, bool], ...]
    params: int

    @property
    def files(self) -> dict[str, str]:
        return {f"{self.name}.ll": self.source}


class LLVMBackend:
    name = "llvm"

    def emit(self, program: ir.Program, target: Target, baking=None) -> LLVMModule:
        if baking is not None:
            raise ConvgenError("llvm backend: baked weights are for the C backend (-t c)")
        entries = []
        for stage in program.stages:
            parallel = parallel_loop(stage) is not None
            entries.append((openmp_entry_name(stage) if parallel else stage.name, parallel))
        return LLVMModule(program.name, emit_llvm(program, target), tuple(entries), len(program.buffers))

    def load(self, emitted: LLVMModule, target: Target, workdir: Path | None = None) -> "LLVMLoaded":
        self._prepare(emitted, workdir)
        functions, engine, image = jit_functions(emitted.source, [name for name, _ in emitted.entries], target)
        return LLVMLoaded(self._stages(emitted, functions), engine, image)

    def restore(self, emitted: LLVMModule, image: bytes, target: Target,
                workdir: Path | None = None) -> "LLVMLoaded":
        self._prepare(emitted, workdir)
        functions, engine = jit_object(image, [name for name, _ in emitted.entries], target)
        return LLVMLoaded(self._stages(emitted, functions), engine, image)

    @staticmethod
    def _prepare(emitted: LLVMModule, workdir: Path | None) -> None:
        if any(parallel for _, parallel in emitted.entries):
            openmp()  # the JIT resolves omp_get_thread_num in it
        if workdir is not None:
            workdir.mkdir(parents=True, exist_ok=True)
            for file_name, text in emitted.files.items():
                (workdir / file_name).write_text(text)

    @staticmethod
    def _stages(emitted: LLVMModule, functions) -> tuple["LLVMStage", ...]:
        stages = []
        for function, (_, parallel) in zip(functions, emitted.entries):
            function.argtypes = [ctypes.c_void_p] * (1 if parallel else emitted.params)
            function.restype = None
            stages.append(LLVMStage(function, parallel))
        return tuple(stages)


@dataclass
class LLVMLoaded:
    stages: tuple["LLVMStage", ...]   # the program's stages, prepare then run
    engine: object                    # owns the code; kept alive with the kernel
    image: bytes                      # the object code, for the kernel cache


@dataclass
class LLVMStage:
    function: object
    parallel: bool

    @property
    def convention(self) -> str:
        return "openmp" if self.parallel else "serial"

    def launch(self, pointers: list[int], threads: int) -> None:
        if not self.parallel:
            self.function(*pointers)
            return
        # the kernel's pointers, then a zeroed counter for each thread's share
        arguments = (ctypes.c_uint64 * (len(pointers) + SHARE_COUNTER_SLOTS * threads))(*pointers)
        openmp().GOMP_parallel(ctypes.cast(self.function, ctypes.c_void_p), arguments, threads, 0)
