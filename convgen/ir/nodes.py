"""IR nodes: buffers, expressions, statements and kernels.

Expressions compute indices (int64) and values: float32, or for quantized
layers int8 storage with int32 arithmetic (a Cast widens and narrows);
statements are loops, stores, conditionals and local allocations. Nodes are
frozen dataclasses compared structurally; a pass rebuilds only what it changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

INDEX = "int64"
BOOL = "bool"
FLOAT32 = "float32"
INT8 = "int8"
INT32 = "int32"
VALUE_TYPES = (FLOAT32, INT8, INT32)
DTYPE_BYTES = {FLOAT32: 4, INT8: 1, INT32: 4, INDEX: 8}
INT_TYPES = (INDEX, INT8, INT32)

# serial..parallel run on a CPU; gpu_block and gpu_thread bind a loop to a GPU index
# (blockIdx / threadIdx along the loop's `axis`).
# transposed: a loop over a vectorized copy that reads across the rows of a block, which the
# LLVM backend emits unrolled as a register transpose and C as a plain loop (set by the
# mark-transposes pass).
# dot: an innermost int8 multiply-accumulate reduction (ir/dot.py) that C runs as packed dot
# products where the compiler targets Arm's DSP extension or Helium, and the others as a plain loop.
LOOP_KINDS = ("serial", "vectorized", "unrolled", "parallel", "transposed", "dot", "gpu_block", "gpu_thread")
GPU_KINDS = ("gpu_block", "gpu_thread")
GPU_AXES = ("x", "y", "z")
LOOP_ROLES = ("spatial", "reduction")
# global: the caller's arrays (the kernel's arguments); workspace: scratch the caller provides,
# at an offset known at build time (copies in another layout, padded inputs, transformed
# weights); local: one thread's (registers, stack); constant: tables the kernel carries;
# shared: a GPU block's shared memory, seen by all of its threads.
SCOPES = ("global", "workspace", "local", "constant", "shared")

ARITH_OPS = ("+", "-", "*", "/", "//", "%", "min", "max")
COMPARE_OPS = ("<", "<=", "==", "!=")
LOGIC_OPS = ("&&", "||")


class Node:
    """Base of all IR nodes."""


# ---------------------------------------------------------------------------
# Buffers
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Dim:
    """One storage dimension of a layout: a logical axis whole (block 0), or,
    when the axis is blocked, its outer part (block 0, the axis also has an
    inner Dim) or its inner block of `block` elements."""

    axis: str
    block: int = 0


@dataclass(frozen=True)
class Buffer:
    """A named array, indexed by logical axis.

    axes: the logical dimensions, in index order (e.g. N, C, H, W).
    shape: their extents (a padded copy's include its padding).
    layout: the storage dimensions, outermost first (e.g. NHWC, or NCHW8c
        with C split into an outer part and an inner block of 8).
    scope: where it lives (SCOPES). A parameter (global) is the caller's
        array exactly as the spec describes it; schedules never change one,
        they add workspace copies and the stages that fill them.
    values: for scope "constant" only, the contents in storage order: a
        table the kernel carries (e.g. per-channel requantization multipliers).
    pad: for a workspace copy of a parameter, (before, after) per axis by
        which it extends the parameter, filled per `pad_mode` by the stage
        that packs it ("constant" fills with `pad_value`; "reflect",
        "replicate" copy edges); () for none.
    transform: for a workspace buffer, the named transform of the stage that
        fills it (e.g. Winograd's weights, axes T, O, I), for readers and
        error bounds; "" for a copy.
    weight: for a parameter, whether it is fixed when the kernel is bound
        (weights, bias): stages that read nothing else form the prepare step.
    """

    name: str
    dtype: str
    axes: tuple[str, ...]
    shape: tuple[int, ...]
    layout: tuple[Dim, ...]
    scope: str = "global"
    values: tuple | None = None
    pad: tuple[tuple[int, int], ...] = ()
    pad_mode: str = "constant"
    pad_value: float = 0.0
    transform: str = ""
    weight: bool = False

    def __post_init__(self):
        if len(self.axes) != len(self.shape):
            raise ValueError(f"buffer {self.name}: {len(self.axes)} axes but {len(self.shape)} extents")
        outer = sorted(d.axis for d in self.layout if d.block == 0)
        if outer != sorted(self.axes):
            raise ValueError(f"buffer {self.name}: layout {self.layout_name} does not name each axis of "
                             f"{self.axes} once")
        inner = [d.axis for d in self.layout if d.block]
        if len(inner) != len(set(inner)) or any(d.block < 0 for d in self.layout):
            raise ValueError(f"buffer {self.name}: layout {self.layout_name} blocks an axis twice")
        if self.scope not in SCOPES:
            raise ValueError(f"buffer {self.name}: scope {self.scope!r} is not one of {SCOPES}")
        if (self.scope == "constant") != (self.values is not None):
            raise ValueError(f"buffer {self.name}: values are for (and required by) scope 'constant'")
        if self.values is not None and len(self.values) != math.prod(self.shape):
            raise ValueError(f"buffer {self.name}: {len(self.values)} values for shape {self.shape}")
        if self.pad and len(self.pad) != len(self.axes):
            raise ValueError(f"buffer {self.name}: pad needs (before, after) for each of {len(self.axes)} axes")

    @property
    def layout_name(self) -> str:
        """E.g. NCHW, NHWC, NCHW8c, OIHW8i16o; axes of several letters are joined with '/'."""
        parts = [f"{d.block}{d.axis.lower()}" if d.block else d.axis for d in self.layout]
        return "".join(parts) if all(len(d.axis) == 1 for d in self.layout) else "/".join(parts)

    def extent(self, axis: str) -> int:
        return self.shape[self.axes.index(axis)]

    def block(self, axis: str) -> int:
        """The inner block size of an axis, or 0 when it is not blocked."""
        return next((d.block for d in self.layout if d.axis == axis and d.block), 0)

    def storage_extent(self, dim: Dim) -> int:
        if dim.block:
            return dim.block
        block = self.block(dim.axis)
        return -(-self.extent(dim.axis) // block) if block else self.extent(dim.axis)

    @property
    def storage_shape(self) -> tuple[int, ...]:
        """The shape in storage order (what a C or NumPy caller allocates); blocked axes round up."""
        return tuple(self.storage_extent(d) for d in self.layout)

    @property
    def size(self) -> int:
        """Elements of storage."""
        return math.prod(self.storage_shape)

    @property
    def nbytes(self) -> int:
        return self.size * DTYPE_BYTES[self.dtype]


def parse_layout(text: str, axes: tuple[str, ...]) -> tuple[Dim, ...]:
    """'NCHW8c' -> N, C, H, W, 8c: capitals name axes; digits and a lower-case
    letter name the inner block of that axis. Raises ValueError with the reason."""
    dims, digits = [], ""
    for ch in text:
        if ch.isdigit():
            digits += ch
        elif digits:
            if ch.upper() not in axes or not ch.islower():
                raise ValueError(f"block '{digits}{ch}' must name one of {', '.join(a.lower() for a in axes)}")
            if int(digits) < 1:
                raise ValueError(f"block '{digits}{ch}' must be at least 1")
            dims.append(Dim(ch.upper(), int(digits)))
            digits = ""
        elif ch in axes:
            dims.append(Dim(ch))
        else:
            raise ValueError(f"'{ch}' is not one of the axes {''.join(axes)}")
    if digits:
        raise ValueError(f"block size {digits} is not followed by an axis letter")
    outer = sorted(d.axis for d in dims if not d.block)
    if outer != sorted(axes):
        raise ValueError(f"expected each of {''.join(axes)} once in capitals")
    inner = [d.axis for d in dims if d.block]
    if len(inner) != len(set(inner)):
        raise ValueError("an axis is blocked twice")
    return tuple(dims)


def plain_layout(axes) -> tuple[Dim, ...]:
    """Row-major in the given axis order."""
    return tuple(Dim(a) for a in axes)


# ---------------------------------------------------------------------------
# Expressions
# ---------------------------------------------------------------------------

class Expr(Node):
    """Base of expressions; arithmetic operators build BinOp nodes."""

    def __add__(self, other): return BinOp("+", self, as_expr(other, self))
    def __radd__(self, other): return BinOp("+", as_expr(other, self), self)
    def __sub__(self, other): return BinOp("-", self, as_expr(other, self))
    def __rsub__(self, other): return BinOp("-", as_expr(other, self), self)
    def __mul__(self, other): return BinOp("*", self, as_expr(other, self))
    def __rmul__(self, other): return BinOp("*", as_expr(other, self), self)
    def __truediv__(self, other): return BinOp("/", self, as_expr(other, self))
    def __floordiv__(self, other): return BinOp("//", self, as_expr(other, self))
    def __mod__(self, other): return BinOp("%", self, as_expr(other, self))
    def __neg__(self): return BinOp("-", as_expr(0, self), self)

    @property
    def dtype(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True, eq=True)
class IntImm(Expr):
    """An integer constant: an index (int64) unless `type` says int32 or int8."""

    value: int
    type: str = INDEX

    @property
    def dtype(self) -> str:
        return self.type


@dataclass(frozen=True, eq=True)
class BoolImm(Expr):
    value: bool

    @property
    def dtype(self) -> str:
        return BOOL


@dataclass(frozen=True, eq=True)
class FloatImm(Expr):
    value: float
    type: str = FLOAT32

    @property
    def dtype(self) -> str:
        return self.type


@dataclass(frozen=True, eq=True)
class Var(Expr):
    """A loop variable (int64)."""

    name: str

    @property
    def dtype(self) -> str:
        return INDEX


@dataclass(frozen=True, eq=True)
class BinOp(Expr):
    """Binary operation. `//` and `%` are floor division and modulo on ints;
    `/` is float division; comparisons and `&&`/`||` give bool."""

    op: str
    a: Expr
    b: Expr

    def __post_init__(self):
        if self.op not in ARITH_OPS + COMPARE_OPS + LOGIC_OPS:
            raise ValueError(f"unknown operator {self.op!r}")
        if self.a.dtype != self.b.dtype:
            raise TypeError(f"operands of {self.op!r} differ in type: {self.a.dtype} and {self.b.dtype}")
        if self.op in LOGIC_OPS and self.a.dtype != BOOL:
            raise TypeError(f"operands of {self.op!r} must be bool; got {self.a.dtype}")
        if self.op in ("//", "%") and self.a.dtype != INDEX:
            raise TypeError(f"{self.op!r} is for integer indices; got {self.a.dtype}")
        if self.op == "/" and self.a.dtype != FLOAT32:
            raise TypeError(f"'/' is float division; got {self.a.dtype} (indices use '//')")
        if self.a.dtype == INT8 and self.op not in COMPARE_OPS:
            raise TypeError(f"{self.op!r} on int8: widen to int32 with Cast first")

    @property
    def dtype(self) -> str:
        return BOOL if self.op in COMPARE_OPS + LOGIC_OPS else self.a.dtype


@dataclass(frozen=True, eq=True)
class Select(Expr):
    cond: Expr
    true_value: Expr
    false_value: Expr

    def __post_init__(self):
        if self.cond.dtype != BOOL or self.true_value.dtype != self.false_value.dtype:
            raise TypeError("select needs a bool condition and two values of one type")

    @property
    def dtype(self) -> str:
        return self.true_value.dtype


@dataclass(frozen=True, eq=True)
class Load(Expr):
    buffer: Buffer
    indices: tuple[Expr, ...]

    def __post_init__(self):
        _check_indices(self.buffer, self.indices)

    @property
    def dtype(self) -> str:
        return self.buffer.dtype


@dataclass(frozen=True, eq=True)
class Cast(Expr):
    """value converted to another integer type: int8 -> int32 widens (sign
    extends); int32 -> int8 keeps the low byte, so clamp to [-128, 127] first."""

    value: Expr
    type: str

    def __post_init__(self):
        if self.value.dtype not in (INT8, INT32) or self.type not in (INT8, INT32):
            raise TypeError(f"cast converts between int8 and int32; got {self.value.dtype} -> {self.type}")

    @property
    def dtype(self) -> str:
        return self.type


# Intrinsic functions a backend must know; name -> result type.
INTRINSICS = {
    "reflect": INDEX,   # reflect(i, n): mirror i into 0..n-1 without repeating the edge
    "clamp": INDEX,     # clamp(i, n): min(max(i, 0), n - 1)
    "in_range": BOOL,   # in_range(i, n): 0 <= i < n; a padding guard (a padded copy makes it true)
    # requantize(acc, multiplier, shift), all int32: TFLite's MultiplyByQuantizedMultiplier,
    # acc * multiplier * 2**(shift - 31) rounded as quant.requantize does
    "requantize": INT32,
    # divide_round(a, n), int32, n > 0: a / n rounded half away from zero (TFLite's average pool)
    "divide_round": INT32,
}
INDEX_INTRINSICS = ("reflect", "clamp", "in_range")  # (index, size) -> remapped index or guard


@dataclass(frozen=True, eq=True)
class Call(Expr):
    """An intrinsic function of INTRINSICS."""

    name: str
    args: tuple[Expr, ...]

    def __post_init__(self):
        if self.name not in INTRINSICS:
            raise ValueError(f"unknown intrinsic {self.name!r}; known: {', '.join(INTRINSICS)}")

    @property
    def dtype(self) -> str:
        return INTRINSICS[self.name]


def as_expr(value, like: Expr | None = None) -> Expr:
    """Wrap a Python number as an immediate of the kind `like` needs."""
    if isinstance(value, Expr):
        return value
    if isinstance(value, bool):
        return BoolImm(value)
    if isinstance(value, int) and (like is None or like.dtype in INT_TYPES):
        return IntImm(value, INDEX if like is None else like.dtype)
    if isinstance(value, (int, float)):
        return FloatImm(float(value), like.dtype if like is not None and like.dtype != INDEX else FLOAT32)
    raise TypeError(f"cannot make an IR expression of {value!r}")


def binop(op: str, a, b) -> BinOp:
    a = as_expr(a, b if isinstance(b, Expr) else None)
    return BinOp(op, a, as_expr(b, a))


def lt(a, b): return binop("<", a, b)
def le(a, b): return binop("<=", a, b)
def minimum(a, b): return binop("min", a, b)
def maximum(a, b): return binop("max", a, b)


def all_of(*conds: Expr) -> Expr:
    result: Expr = BoolImm(True)
    for cond in conds:
        result = cond if result == BoolImm(True) else BinOp("&&", result, cond)
    return result


def _check_indices(buffer: Buffer, indices: tuple) -> None:
    if len(indices) != len(buffer.axes):
        raise ValueError(f"{buffer.name} has {len(buffer.axes)} axes; got {len(indices)} indices")
    for index in indices:
        if index.dtype != INDEX:
            raise TypeError(f"index of {buffer.name} must be {INDEX}; got {index.dtype}")


# ---------------------------------------------------------------------------
# Statements
# ---------------------------------------------------------------------------

class Stmt(Node):
    """Base of statements."""


@dataclass(frozen=True, eq=True)
class Store(Stmt):
    buffer: Buffer
    indices: tuple[Expr, ...]
    value: Expr

    def __post_init__(self):
        _check_indices(self.buffer, self.indices)
        if self.value.dtype != self.buffer.dtype:
            raise TypeError(f"storing {self.value.dtype} into {self.buffer.name} of {self.buffer.dtype}")


@dataclass(frozen=True, eq=True)
class Loop(Stmt):
    """for var in 0 .. extent-1, run body. `kind` says how the loop is to run;
    `role` whether its iterations write different outputs (spatial) or
    accumulate into the same ones (reduction), which decides what may run
    them side by side. `axis` (x, y, z) names the GPU index a gpu_block or
    gpu_thread loop is bound to, and is "" for the others."""

    var: Var
    extent: int
    body: Stmt
    kind: str = "serial"
    role: str = "spatial"
    axis: str = ""

    def __post_init__(self):
        if self.kind not in LOOP_KINDS:
            raise ValueError(f"loop {self.var.name}: kind {self.kind!r} is not one of {LOOP_KINDS}")
        if self.role not in LOOP_ROLES:
            raise ValueError(f"loop {self.var.name}: role {self.role!r} is not one of {LOOP_ROLES}")
        if (self.kind in GPU_KINDS) != (self.axis in GPU_AXES):
            expected = "x, y or z" if self.kind in GPU_KINDS else "none"
            raise ValueError(f"loop {self.var.name}: a {self.kind} loop takes axis {expected}; got {self.axis!r}")


@dataclass(frozen=True, eq=True)
class Seq(Stmt):
    body: tuple[Stmt, ...]


@dataclass(frozen=True, eq=True)
class If(Stmt):
    cond: Expr
    then: Stmt
    orelse: Stmt | None = None


@dataclass(frozen=True, eq=True)
class Barrier(Stmt):
    """Every thread of a GPU block waits here until all have arrived, and their
    writes to shared memory before it are seen by all after it (CUDA's
    __syncthreads). It stands between loops bound to GPU threads, never in one."""


@dataclass(frozen=True, eq=True)
class Allocate(Stmt):
    """A local buffer that lives for the duration of body."""

    buffer: Buffer
    body: Stmt


@dataclass(frozen=True, eq=True)
class Stage(Stmt):
    """One loop nest of a program, run after the stages before it: the
    computation itself, or data movement around it (a copy into another
    layout or a padded buffer, a weight transform). A program's body is a
    Seq of stages, or one statement (a single stage)."""

    name: str
    body: Stmt


@dataclass(frozen=True, eq=True)
class Func(Node):
    """A program: parameters (the caller's arrays, in call order), workspace
    buffers (scratch whose size is known at build time) and a body, a Seq of
    Stages or a single statement. `doc` says in words what it computes;
    backends put it in comments. `prefix` starts the name of every loop,
    stage and buffer but the parameters (lowering's name prefix), so that
    two layers' names never collide in one program."""

    name: str
    params: tuple[Buffer, ...]
    body: Stmt
    doc: str = ""
    workspace: tuple[Buffer, ...] = ()
    prefix: str = ""

    @property
    def stages(self) -> tuple[Stage, ...]:
        """The body's stages in order; a body of one nest is one stage, "compute"."""
        if isinstance(self.body, Stage):
            return (self.body,)
        if isinstance(self.body, Seq) and self.body.body and all(isinstance(s, Stage) for s in self.body.body):
            return self.body.body
        return (Stage(self.prefix + "compute", self.body),)

    def written_buffers(self) -> set[str]:
        """Names of the parameters the body stores to (the outputs)."""
        from .walk import find_all
        return {s.buffer.name for s in find_all(self.body, Store) if s.buffer.scope == "global"}


__all__ = [
    "INDEX", "BOOL", "FLOAT32", "INT8", "INT32", "VALUE_TYPES", "INT_TYPES", "INDEX_INTRINSICS", "LOOP_KINDS", "GPU_KINDS",
    "GPU_AXES", "LOOP_ROLES", "SCOPES", "ARITH_OPS", "COMPARE_OPS", "LOGIC_OPS", "INTRINSICS",
    "Node", "Dim", "Buffer", "parse_layout", "plain_layout",
    "Expr", "IntImm", "BoolImm", "FloatImm", "Var", "BinOp", "Select", "Load", "Cast", "Call",
    "as_expr", "binop", "lt", "le", "minimum", "maximum", "all_of",
    "Stmt", "Store", "Loop", "Seq", "If", "Barrier", "Allocate", "Stage", "Func", "DTYPE_BYTES",
]
