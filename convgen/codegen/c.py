"""C backend: a walk over the IR that writes C99 source and header text.

The body is plain C99 with flat indexing (the buffer layout decides the
offsets through ir.flat_index); the boilerplate around it comes from
templates/c/. The code uses no heap and no mutable globals. Loop kinds:
unrolled loops are written out iteration by iteration (a transposed loop,
which only the LLVM backend treats apart, is a plain loop); vectorized and
parallel loops carry OpenMP pragmas (`omp simd`, `omp parallel for`) behind
macros that expand to nothing unless the build enables them, so the file
compiles warning-free anywhere.

`CBackend` is the backend interface (codegen/__init__.py): emit the files,
build them with the target's C compiler into a shared object (native.py),
load and launch it.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import ir
from ..errors import CodegenError
from ..native import load_c, openmp
from ..target import Target
from . import refuse_gpu
from .render import render

C_TYPES = {ir.FLOAT32: "float", ir.INDEX: "ptrdiff_t", ir.BOOL: "int", ir.INT8: "int8_t", ir.INT32: "int32_t"}


def _helper(op: str, ctype: str, suffix: str) -> tuple[str, str]:
    name = f"convgen_{op}_{suffix}"
    sign = ">" if op == "max" else "<"
    return name, f"static inline {ctype} {name}({ctype} a, {ctype} b) {{ return a {sign} b ? a : b; }}"


# min/max as tiny inline functions: C99 has no operator for them, and fmaxf would need libm.
_HELPERS = {(op, dtype): _helper(op, C_TYPES[dtype], suffix)
            for op in ("min", "max") for dtype, suffix in ((ir.FLOAT32, "f32"), (ir.INDEX, "index"), (ir.INT32, "i32"))}
_HELPERS[("reflect", ir.INDEX)] = ("convgen_reflect", (
    "static inline ptrdiff_t convgen_reflect(ptrdiff_t i, ptrdiff_t n) "
    "{ return i < 0 ? -i : (i < n ? i : 2 * n - 2 - i); }"))
_HELPERS[("in_range", ir.BOOL)] = ("convgen_in_range", (
    "static inline int convgen_in_range(ptrdiff_t i, ptrdiff_t n) { return 0 <= i && i < n; }"))
_HELPERS[("clamp", ir.INDEX)] = ("convgen_clamp", (
    "static inline ptrdiff_t convgen_clamp(ptrdiff_t i, ptrdiff_t n) "
    "{ return i < 0 ? 0 : (i < n ? i : n - 1); }"))
# TFLite's MultiplyByQuantizedMultiplier in C99 without division (it would call a
# library routine on 32-bit targets): gemmlowp's saturating rounding doubling high
# multiply, then a rounding right shift, half away from zero.
_HELPERS[("requantize", ir.INT32)] = ("convgen_requantize", """\
static inline int32_t convgen_requantize(int32_t acc, int32_t multiplier, int32_t shift)
{
    const int32_t left = shift > 0 ? shift : 0, right = shift > 0 ? 0 : -shift;
    const int32_t a = (int32_t)((int64_t)acc * ((int64_t)1 << left));
    const int64_t product = (int64_t)a * multiplier;
    const int64_t total = product + (product >= 0 ? (1 << 30) : 1 - (1 << 30));
    const int32_t high = (a == INT32_MIN && multiplier == INT32_MIN) ? INT32_MAX
                       : (int32_t)(total >= 0 ? total >> 31 : -((-total) >> 31));
    const int32_t mask = (int32_t)(((int64_t)1 << right) - 1);
    const int32_t threshold = (mask >> 1) + (high < 0 ? 1 : 0);
    return (high >> right) + ((high & mask) > threshold ? 1 : 0);
}""")
_HELPERS[("divide_round", ir.INT32)] = ("convgen_divide_round", (
    "static inline int32_t convgen_divide_round(int32_t a, int32_t n) "
    "{ return (a + (a > 0 ? n / 2 : -(n / 2))) / n; }"))
# Pragmas behind macros: without OpenMP (or -DCONVGEN_OPENMP_SIMD) they vanish, and no
# compiler warns about an unknown pragma.
_MACROS = {
    "parallel": ("CONVGEN_PARALLEL_FOR", "#if defined(_OPENMP)\n#define CONVGEN_PARALLEL_FOR _Pragma(\"omp parallel for\")\n"
                 "#else\n#define CONVGEN_PARALLEL_FOR\n#endif"),
    "vectorized": ("CONVGEN_SIMD", "#if defined(_OPENMP) || defined(CONVGEN_OPENMP_SIMD)\n"
                   "#define CONVGEN_SIMD _Pragma(\"omp simd\")\n#else\n#define CONVGEN_SIMD\n#endif"),
}


def c_name(name: str) -> str:
    """Loop names like ow.i become C identifiers like ow_i."""
    return name.replace(".", "_")


# C operator precedence (higher binds tighter); IR `//` is emitted as `/` once proven non-negative.
_PRECEDENCE = {"||": 1, "&&": 2, "==": 3, "!=": 3, "<": 4, "<=": 4, "+": 5, "-": 5,
               "*": 6, "/": 6, "//": 6, "%": 6}
_CAST_PRECEDENCE = 7  # a cast binds tighter than any binary operator


@dataclass(frozen=True)
class CFiles:
    """An emitted kernel: `<name>.h` and `<name>.c`."""

    name: str
    header: str
    source: str
    baked: tuple[str, ...] = ()   # parameters baked into the source rather than taken as arguments
    kinds: frozenset = frozenset()   # the loop kinds in the body: which compiler flags it needs
    params: int = 0                  # arguments the function takes

    @property
    def files(self) -> dict[str, str]:
        return {f"{self.name}.h": self.header, f"{self.name}.c": self.source}


@dataclass(frozen=True)
class Baking:
    """Parameters baked into the .c as const arrays instead of taken as
    arguments: values in the kernel's storage layout, by parameter name, and
    for the arrays an alignment in bytes and a linker section (GCC/Clang
    attributes; 0 and "" leave them to the compiler: `const` puts them in
    .rodata, which firmware links into flash)."""

    arrays: dict
    align: int = 0
    section: str = ""


def emit_c(func: ir.Func, baking: Baking | None = None) -> CFiles:
    """Render a kernel as a C99 header and source file."""
    baked = baking.arrays if baking is not None else {}
    emitter = CLikeEmitter(func.name, set(baked))
    used = {node.buffer.name for node in ir.find_all(func.body, (ir.Load, ir.Store))}
    for param in func.params:
        if param.name not in used:  # e.g. every tap lands in padding: say so, or -Wunused-parameter fails
            emitter.emit(1, f"(void){emitter.c_array_name(param)};")
    emitter.stmt(func.body, 1)
    takes = ir.signature(func)   # the header documents what the caller passes
    outputs = {a.name for a in takes.outputs}
    arguments = [p for p in func.params if p.name not in baked]
    context = dict(
        name=func.name,
        guard=f"CONVGEN_{func.name.upper()}_H",
        doc_lines=func.doc.splitlines() or [func.name],
        params=[_c_param(p, p.name in outputs) for p in arguments],
        arg_names=[p.name for p in arguments],
        args=[_arg_doc(p, p.name in outputs) for p in arguments],
        baked=[_arg_doc(p, False) for p in func.params if p.name in baked],
        workspace_bytes=takes.workspace_bytes,
    )
    header_includes = ["stddef.h"] + (["stdint.h"] if any(p.dtype in (ir.INT8, ir.INT32) for p in func.params) else [])
    header = render("c/kernel.h.j2", header_includes=header_includes, **context)
    tables = [_c_table(emitter.c_array_name(b), b.dtype, b.values) for b in ir.constant_buffers(func.body)]
    weights = [_baked_array(emitter.c_array_name(p), p, baked[p.name]) for p in func.params if p.name in baked]
    source = render("c/kernel.c.j2", includes=sorted(emitter.includes), tables=tables, weights=weights,
                    weight_attributes=_attributes(baking) if baked else "",
                    macros=[_MACROS[kind][1] for kind in sorted(emitter.macros)],
                    helpers=[_HELPERS[key][1] for key in sorted(emitter.helpers)],
                    body="\n".join(emitter.lines), **context)
    kinds = frozenset(loop.kind for loop in ir.find_all(func.body, ir.Loop))
    return CFiles(func.name, header, source, tuple(p.name for p in func.params if p.name in baked), kinds,
                  len(arguments))


def _c_table(name: str, dtype: str, values, attributes: str = "") -> str:
    """A constant array at file scope: static const, so it lands in flash (.rodata)."""
    literals = c_literals(dtype, values)
    rows = [", ".join(literals[i:i + 12]) for i in range(0, len(literals), 12)]
    body = "".join(f"\n    {row}," for row in rows)
    return f"static const {C_TYPES[dtype]} {name}[{len(values)}]{attributes} = {{{body}\n}};"


def _baked_array(name: str, buffer: ir.Buffer, array: np.ndarray) -> str:
    array = np.asarray(array)
    if array.size != buffer.size or array.dtype != np.dtype(buffer.dtype):
        raise CodegenError(f"C backend: baked {buffer.name}: expected {buffer.size} {buffer.dtype} values "
                           f"(its storage layout {buffer.layout_name}); got {array.size} {array.dtype}")
    values = array.ravel().tolist()
    return _c_table(name, buffer.dtype, values, " CONVGEN_WEIGHT_ATTRIBUTES")


def _attributes(baking: Baking) -> str:
    """The GCC/Clang attributes for baked arrays: alignment and section, as asked."""
    parts = ([f"aligned({baking.align})"] if baking.align else []) + (
        [f'section("{baking.section}")'] if baking.section else [])
    return f"__attribute__(({', '.join(parts)}))" if parts else ""


def c_literals(dtype: str, values) -> list[str]:
    """C literals of values of an IR type, each reading back exactly."""
    literal = float_literal if dtype == ir.FLOAT32 else _int_literal
    return [literal(v) for v in values]


def _int_literal(value: int) -> str:
    """A C literal of an int32 value; INT32_MIN has no literal of type int."""
    return "(-2147483647 - 1)" if value == -(2**31) else str(value)


def _c_param(buffer: ir.Buffer, is_output: bool) -> str:
    const = "" if is_output else "const "
    return f"{const}{C_TYPES[buffer.dtype]} *CONVGEN_RESTRICT {buffer.name}"


def _arg_doc(buffer: ir.Buffer, is_output: bool) -> dict:
    layout = buffer.layout_name if len(buffer.axes) > 1 else ""
    if buffer.pad:
        fill = buffer.pad_mode if buffer.pad_mode != "constant" else f"filled with {float_literal(buffer.pad_value)}"
        pads = ", ".join(f"{a} {lo}+{hi}" for a, (lo, hi) in zip(buffer.axes, buffer.pad) if lo or hi)
        layout += f" (padded {pads}, {fill})"
    if buffer.transform:  # the caller passes transformed weights (convgen's Python API computes them)
        layout += f" ({buffer.transform} of the OIHW weights: [t][o][i] = (G g G^T)[t])"
    return dict(name=buffer.name, role="output" if is_output else "input", dtype=buffer.dtype, shape=buffer.storage_shape,
                layout=layout, bytes=buffer.size * np.dtype(buffer.dtype).itemsize)


def float_literal(value: float) -> str:
    """A float32 C literal that reads back to the same float32."""
    if math.isinf(value):
        return "-INFINITY" if value < 0 else "INFINITY"
    text = format(float(np.float32(value)), ".9g")
    if not any(ch in text for ch in ".en"):
        text += ".0"
    return text + "f"


class CLikeEmitter:
    """A walk over the IR that writes C-family statements and expressions.
    A renderer for another C-like language (CUDA) subclasses it and changes
    the hooks below: `language` (named in refusals), `loop_header` (the lines
    that open a loop of each kind), `declare_local` (a buffer allocated in
    the kernel, by memory scope) and `barrier`. The base refuses what no CPU
    runs: loops bound to GPU indices, shared memory, barriers."""

    language = "C"

    def __init__(self, name: str, baked: set[str] = frozenset()):
        self.name = name
        self.baked = baked
        self.lines: list[str] = []
        self.includes: set[str] = set()
        self.helpers: set[tuple[str, str]] = set()
        self.macros: set[str] = set()
        self.ranges: ir.Ranges = {}

    def emit(self, depth: int, text: str) -> None:
        self.lines.append("    " * depth + text)

    # -- hooks for C-like languages ----------------------------------------
    def loop_header(self, node: ir.Loop, var: str) -> list[str]:
        """The lines that open a (not unrolled) loop, ending in its `{`."""
        refuse_gpu(self.language, node)
        lines = []
        if node.kind in _MACROS:
            self.macros.add(node.kind)
            lines.append(_MACROS[node.kind][0])
        return lines + [f"for (ptrdiff_t {var} = 0; {var} < {node.extent}; ++{var}) {{"]

    def declare_local(self, buffer: ir.Buffer) -> str:
        """The declaration of a buffer allocated in the kernel."""
        if buffer.scope == "shared":
            refuse_gpu(self.language, ir.Allocate(buffer, ir.Seq(())))
        return f"{C_TYPES[buffer.dtype]} {buffer.name}[{buffer.size}];"

    def barrier(self) -> str:
        refuse_gpu(self.language, ir.Barrier())
        return ""

    # -- statements ---------------------------------------------------------
    def stmt(self, node: ir.Stmt, depth: int) -> None:
        method = getattr(self, "stmt_" + type(node).__name__, None)
        if method is None:
            raise CodegenError(f"{self.language} backend: cannot emit statement {type(node).__name__}")
        method(node, depth)

    def stmt_Seq(self, node: ir.Seq, depth: int) -> None:
        for s in node.body:
            self.stmt(s, depth)

    def stmt_Loop(self, node: ir.Loop, depth: int) -> None:
        name, var = node.var.name, c_name(node.var.name)
        self.ranges[name] = (0, node.extent - 1)
        if node.kind == "unrolled":
            for k in range(node.extent):
                self.emit(depth, f"{{ /* {var} = {k} */")
                self.stmt(ir.simplify(ir.substitute(node.body, {name: ir.IntImm(k)}), self.ranges), depth + 1)
                self.emit(depth, "}")
        else:
            for line in self.loop_header(node, var):
                self.emit(depth, line)
            self.stmt(node.body, depth + 1)
            self.emit(depth, "}")
        del self.ranges[name]

    def stmt_Store(self, node: ir.Store, depth: int) -> None:
        self.emit(depth, f"{self.access(node.buffer, node.indices)} = {self.expr(node.value)};")

    def stmt_If(self, node: ir.If, depth: int) -> None:
        self.emit(depth, f"if ({self.expr(node.cond)}) {{")
        self.stmt(node.then, depth + 1)
        if node.orelse is not None:
            self.emit(depth, "} else {")
            self.stmt(node.orelse, depth + 1)
        self.emit(depth, "}")

    def stmt_Barrier(self, node: ir.Barrier, depth: int) -> None:
        self.emit(depth, self.barrier())

    def stmt_Allocate(self, node: ir.Allocate, depth: int) -> None:
        self.emit(depth, self.declare_local(node.buffer))
        self.stmt(node.body, depth)

    # -- expressions --------------------------------------------------------
    def access(self, buffer: ir.Buffer, indices) -> str:
        return f"{self.c_array_name(buffer)}[{self.expr(ir.flat_index(buffer, indices))}]"

    def c_array_name(self, buffer: ir.Buffer) -> str:
        """Arguments keep their names; file-scope arrays (constant tables, baked
        weights) take the kernel's name first, so that kernels can share a file."""
        if buffer.scope == "constant" or buffer.name in self.baked:
            return f"{self.name}_{buffer.name}"
        return buffer.name

    def expr(self, node: ir.Expr, parent: int = 0) -> str:
        if isinstance(node, ir.IntImm):
            text = _int_literal(node.value)
            return text if node.value >= 0 or parent == 0 or text.startswith("(") else f"({text})"
        if isinstance(node, ir.Cast):
            return f"({C_TYPES[node.type]}){self.expr(node.value, _CAST_PRECEDENCE)}"
        if isinstance(node, ir.BoolImm):
            return "1" if node.value else "0"
        if isinstance(node, ir.FloatImm):
            if math.isinf(node.value):
                self.includes.add("math.h")
            return float_literal(node.value)
        if isinstance(node, ir.Var):
            return c_name(node.name)
        if isinstance(node, ir.Call):
            key = (node.name, node.dtype)
            if key not in _HELPERS:
                raise CodegenError(f"{self.language} backend: no {self.language} for intrinsic {node.name}")
            self.helpers.add(key)
            return f"{_HELPERS[key][0]}({', '.join(self.expr(a) for a in node.args)})"
        if isinstance(node, ir.Load):
            return self.access(node.buffer, node.indices)
        if isinstance(node, ir.Select):
            text = f"{self.expr(node.cond, 1)} ? {self.expr(node.true_value, 1)} : {self.expr(node.false_value, 1)}"
            return f"({text})"
        if isinstance(node, ir.BinOp):
            return self.binop(node, parent)
        raise CodegenError(f"{self.language} backend: cannot emit expression {type(node).__name__}")

    def binop(self, node: ir.BinOp, parent: int) -> str:
        if node.op in ("min", "max"):
            key = (node.op, node.dtype)
            self.helpers.add(key)
            return f"{_HELPERS[key][0]}({self.expr(node.a)}, {self.expr(node.b)})"
        op, b = node.op, node.b
        if op in ("//", "%"):
            self.require_nonnegative(node)
            op = "/" if op == "//" else "%"
        if op == "+" and isinstance(b, ir.IntImm) and b.value < 0:
            op, b = "-", ir.IntImm(-b.value)
        prec = _PRECEDENCE[op]
        text = f"{self.expr(node.a, prec)} {op} {self.expr(b, prec + 1)}"
        return f"({text})" if prec < parent else text

    def require_nonnegative(self, node: ir.BinOp) -> None:
        if not ir.truncation_is_floor(node, self.ranges):
            raise CodegenError(f"{self.language} backend: cannot prove {ir.format_expr(node)} has a non-negative "
                               f"dividend and a positive divisor")


# ---------------------------------------------------------------------------
# The backend interface
# ---------------------------------------------------------------------------

class CBackend:
    name = "c"

    def emit(self, func: ir.Func, target: Target, baking: Baking | None = None) -> CFiles:
        return emit_c(func, baking)

    def load(self, emitted: CFiles, target: Target, workdir: Path | None = None) -> "CLoaded":
        flags = (target.simd_flags if "vectorized" in emitted.kinds else ()) + \
                (target.openmp_flags if "parallel" in emitted.kinds else ())
        function, library = load_c(emitted.files, emitted.name, target, workdir, flags)
        function.argtypes = [ctypes.c_void_p] * emitted.params
        function.restype = None
        return CLoaded(function, library, "parallel" in emitted.kinds)


@dataclass
class CLoaded:
    function: object
    library: object       # the loaded shared object; kept alive with the kernel
    parallel: bool

    @property
    def convention(self) -> str:
        return "c-openmp" if self.parallel else "serial"

    def launch(self, pointers: list[int], threads: int) -> None:
        if self.parallel:
            openmp().omp_set_num_threads(threads)
        self.function(*pointers)
