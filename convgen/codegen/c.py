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
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .. import ir
from ..errors import CodegenError
from ..ir.program import lay_out, workspace_end
from ..native import load_c, load_c_image, openmp
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
# library routine on 32-bit targets), in few instructions on a 32-bit core: the
# left shift in 32 bits (TFLite requires that it does not overflow); gemmlowp's
# saturating rounding doubling high multiply, whose sign-dependent nudge and
# truncation equal one nudge and a floor shift, (a * m + 2^30) >> 31; then the
# rounding right shift, half away from zero, as (high + 2^(right-1) - (high < 0))
# >> right, in unsigned 32-bit arithmetic where high >= 0 so that nothing
# overflows. tests/test_int8.py checks it against quant.py's gemmlowp forms.
_HELPERS[("requantize", ir.INT32)] = ("convgen_requantize", """\
static inline int32_t convgen_requantize(int32_t acc, int32_t multiplier, int32_t shift)
{
    const int32_t left = shift > 0 ? shift : 0, right = shift > 0 ? 0 : -shift;
    const int32_t a = (int32_t)((uint32_t)acc << left);
    const int32_t high = (a == INT32_MIN && multiplier == INT32_MIN) ? INT32_MAX
                       : (int32_t)(((int64_t)a * multiplier + ((int64_t)1 << 30)) >> 31);
    const uint32_t nudged = (uint32_t)high + (((uint32_t)1 << right) >> 1) - (uint32_t)(high < 0);
    return right == 0 ? high : high < 0 ? (int32_t)nudged >> right : (int32_t)(nudged >> right);
}""")
# min(max(v, -128), 127), the int8 clamp: one SSAT where the compiler targets it.
_HELPERS[("saturate8", ir.INT32)] = ("convgen_saturate_i8", """\
#if defined(__ARM_FEATURE_SAT) && defined(__GNUC__)
#include <arm_acle.h>
static inline int32_t convgen_saturate_i8(int32_t v) { return __ssat(v, 8); }
#else
static inline int32_t convgen_saturate_i8(int32_t v) { return v < -128 ? -128 : (v > 127 ? 127 : v); }
#endif""")
_HELPERS[("divide_round", ir.INT32)] = ("convgen_divide_round", (
    "static inline int32_t convgen_divide_round(int32_t a, int32_t n) "
    "{ return (a + (a > 0 ? n / 2 : -(n / 2))) / n; }"))
# A dot loop's packed multiply-accumulates (ir/dot.py): acc + the sum over k of
# (a[k] + a_offset) * (b[k] + b_offset), the offsets constants that keep each factor
# within int16. Each helper tests the compiler's target features, so one file builds
# everywhere: Arm's DSP extension takes four int8 as a word and makes two SMLADs
# over int16 pairs; Helium takes eight as a vector and makes one VMLADAV; elsewhere
# a plain loop. gcc's SXTAB16 intrinsic takes no rotation, and without one each
# odd-byte extract costs an extra instruction: those two are inline assembly.
_HELPERS[("dot4", ir.INT8)] = ("convgen_dot4_i8", """\
#if defined(__ARM_FEATURE_DSP) && defined(__GNUC__)
#include <arm_acle.h>
static inline uint32_t convgen_word(const int8_t *p) { uint32_t v; __builtin_memcpy(&v, p, 4); return v; }
static inline uint32_t convgen_pair(int32_t offset) { return ((uint32_t)offset & 0xffffu) * 0x10001u; }
/* bytes 0 and 2, then bytes 1 and 3, sign-extended to int16 and added to the offset pair */
static inline uint32_t convgen_even(uint32_t offsets, uint32_t v) { return offsets ? __sxtab16(offsets, v) : __sxtb16(v); }
static inline uint32_t convgen_odd(uint32_t offsets, uint32_t v)
{
    uint32_t r;
    if (offsets) __asm__("sxtab16 %0, %1, %2, ror #8" : "=r"(r) : "r"(offsets), "r"(v));
    else __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
    return r;
}
static inline int32_t convgen_dot4_i8(const int8_t *a, int32_t a_offset, const int8_t *b, int32_t b_offset, int32_t acc)
{
    const uint32_t a_word = convgen_word(a), b_word = convgen_word(b);
    const uint32_t a_pair = convgen_pair(a_offset), b_pair = convgen_pair(b_offset);
    acc = __smlad(convgen_even(a_pair, a_word), convgen_even(b_pair, b_word), acc);
    return __smlad(convgen_odd(a_pair, a_word), convgen_odd(b_pair, b_word), acc);
}
#else
static inline int32_t convgen_dot4_i8(const int8_t *a, int32_t a_offset, const int8_t *b, int32_t b_offset, int32_t acc)
{
    for (int k = 0; k < 4; ++k) {
        acc += ((int32_t)a[k] + a_offset) * ((int32_t)b[k] + b_offset);
    }
    return acc;
}
#endif""")
_HELPERS[("dot8", ir.INT8)] = ("convgen_dot8_i8", """\
#if defined(__ARM_FEATURE_MVE)
#include <arm_mve.h>
static inline int32_t convgen_dot8_i8(const int8_t *a, int32_t a_offset, const int8_t *b, int32_t b_offset, int32_t acc)
{
    int16x8_t a_vector = vldrbq_s16(a), b_vector = vldrbq_s16(b);
    if (a_offset) a_vector = vaddq_n_s16(a_vector, (int16_t)a_offset);
    if (b_offset) b_vector = vaddq_n_s16(b_vector, (int16_t)b_offset);
    return vmladavaq_s16(acc, a_vector, b_vector);
}
#else
static inline int32_t convgen_dot8_i8(const int8_t *a, int32_t a_offset, const int8_t *b, int32_t b_offset, int32_t acc)
{
    return convgen_dot4_i8(a + 4, a_offset, b + 4, b_offset, convgen_dot4_i8(a, a_offset, b, b_offset, acc));
}
#endif""")
# Sixteen elements without offsets (a zero point folded into the bias): one Helium
# VMLADAV over int8 vectors, or two of the eight-element helper.
_HELPERS[("dot16", ir.INT8)] = ("convgen_dot16_i8", """\
#if defined(__ARM_FEATURE_MVE)
static inline int32_t convgen_dot16_i8(const int8_t *a, const int8_t *b, int32_t acc)
{
    return vmladavaq_s8(acc, vldrbq_s8(a), vldrbq_s8(b));
}
#else
static inline int32_t convgen_dot16_i8(const int8_t *a, const int8_t *b, int32_t acc)
{
    return convgen_dot8_i8(a + 8, 0, b + 8, 0, convgen_dot8_i8(a, 0, b, 0, acc));
}
#endif""")
# A vectorized loop's lane-wise multiply-accumulate (ir/dot.py's match_lanes):
# acc[k] += (a[k] + a_offset) * (b[k] + b_offset) for four lanes, one Helium
# vector of int32 (int8 widened as loaded) where the compiler targets Helium,
# else a plain loop. Helium has no vector-by-vector multiply-accumulate: a
# multiply and an add. gcc keeps a tile's accumulators in vector registers.
_HELPERS[("mac4", ir.INT8)] = ("convgen_mac4_i8", """\
#if defined(__ARM_FEATURE_MVE)
#include <arm_mve.h>
static inline void convgen_mac4_i8(int32_t *acc, const int8_t *a, int32_t a_offset, const int8_t *b, int32_t b_offset)
{
    int32x4_t a_vector = vldrbq_s32(a), b_vector = vldrbq_s32(b);
    if (a_offset) a_vector = vaddq_n_s32(a_vector, a_offset);
    if (b_offset) b_vector = vaddq_n_s32(b_vector, b_offset);
    vst1q_s32(acc, vaddq_s32(vld1q_s32(acc), vmulq_s32(a_vector, b_vector)));
}
#else
static inline void convgen_mac4_i8(int32_t *acc, const int8_t *a, int32_t a_offset, const int8_t *b, int32_t b_offset)
{
    for (int k = 0; k < 4; ++k) {
        acc[k] += ((int32_t)a[k] + a_offset) * ((int32_t)b[k] + b_offset);
    }
}
#endif""")
# The same with one factor the same in every lane (an input element against four
# output channels' weights): Helium's multiply-accumulate by a scalar, VMLA.
_HELPERS[("mac4_scalar", ir.INT8)] = ("convgen_mac4_scalar_i8", """\
#if defined(__ARM_FEATURE_MVE)
#include <arm_mve.h>
static inline void convgen_mac4_scalar_i8(int32_t *acc, const int8_t *a, int32_t a_offset, int32_t b)
{
    int32x4_t a_vector = vldrbq_s32(a);
    if (a_offset) a_vector = vaddq_n_s32(a_vector, a_offset);
    vst1q_s32(acc, vmlaq_n_s32(vld1q_s32(acc), a_vector, b));
}
#else
static inline void convgen_mac4_scalar_i8(int32_t *acc, const int8_t *a, int32_t a_offset, int32_t b)
{
    for (int k = 0; k < 4; ++k) {
        acc[k] += ((int32_t)a[k] + a_offset) * b;
    }
}
#endif""")
# Pragmas behind macros: without OpenMP (or -DCONVGEN_OPENMP_SIMD) they vanish, and no
# compiler warns about an unknown pragma.
_MACROS = {
    "parallel": ("CONVGEN_PARALLEL_FOR", "#if defined(_OPENMP)\n#define CONVGEN_PARALLEL_FOR _Pragma(\"omp parallel for\")\n"
                 "#else\n#define CONVGEN_PARALLEL_FOR\n#endif"),
    "vectorized": ("CONVGEN_SIMD", "#if defined(_OPENMP) || defined(CONVGEN_OPENMP_SIMD)\n"
                   "#define CONVGEN_SIMD _Pragma(\"omp simd\")\n#else\n#define CONVGEN_SIMD\n#endif"),
}


def helpers_in_order(keys) -> list[tuple[str, str]]:
    """Helper keys in the order their definitions stand above, so that each
    follows the helpers it calls."""
    order = list(_HELPERS)
    return sorted(keys, key=order.index)


def helper_definition(key: tuple[str, str]) -> str:
    """The C definition of the helper an emitter used for (intrinsic or operator, dtype)."""
    return _HELPERS[key][1]


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
    baked: tuple[str, ...] = ()   # buffers baked into the source rather than taken as arguments
    kinds: frozenset = frozenset()   # the loop kinds in the body: which compiler flags it needs
    stages: tuple[str, ...] = ()     # the stage functions, prepare then run (each takes `params` pointers)
    params: int = 0                  # pointers each stage function takes
    workspace_bytes: int = 0         # the workspace the entry function takes (0: it takes none)
    arguments: tuple[str, ...] = ()  # the entry function's array arguments, in order (then the workspace)

    @property
    def files(self) -> dict[str, str]:
        return {f"{self.name}.h": self.header, f"{self.name}.c": self.source}


@dataclass(frozen=True)
class Baking:
    """Buffers baked into the .c as const arrays instead of taken as
    arguments: values in the buffer's storage layout, by buffer name (the
    weights, or the prepared buffers the prepare step would fill from them),
    and for the arrays an alignment in bytes and a linker section (GCC/Clang
    attributes; 0 and "" leave them to the compiler: `const` puts them in
    .rodata, which firmware links into flash)."""

    arrays: dict
    align: int = 0
    section: str = ""


def emit_c(program: ir.Func | ir.Program, baking: Baking | None = None) -> CFiles:
    """Render a program as a C99 header and source file: one function per
    stage, and when there are several stages or a workspace, the entry
    function `<name>(arguments..., workspace)` that runs them in order
    (`<name>_prepare` and `<name>_run` split it where weights can be
    prepared once). A Func is split first."""
    if isinstance(program, ir.Func):
        program = ir.split(program)
    baked = baking.arrays if baking is not None else {}
    baked_buffers = {b.name: b for b in program.buffers + tuple(s.buffer for s in program.prepared)}
    unknown = sorted(set(baked) - set(baked_buffers))
    if unknown:
        raise CodegenError(f"C backend: baked {unknown[0]}: the program has no buffer of that name")
    emitter = CLikeEmitter(program.name, set(baked))
    takes = [b for b in program.buffers if b.name not in baked]
    workspace = _unbaked_workspace(program, set(baked))
    outputs = program.outputs
    single = len(program.stages) == 1 and not workspace
    functions = []
    for stage in program.stages:
        emitter.lines = []
        emitter.stmt(stage.body, 1)
        written = "\n".join(emitter.lines)
        # e.g. every tap lands in padding, which only unrolling shows: say so, or -Wunused-parameter fails
        unused = [f"    (void){name};" for name in (emitter.c_array_name(b) for b in takes)
                  if not re.search(rf"\b{re.escape(name)}\b", written)]
        emitter.lines = unused + emitter.lines
        functions.append(dict(name=stage.name, params=[_c_param(b, b.name in outputs or b.scope == "workspace")
                                                       for b in takes],
                              body="\n".join(emitter.lines)))
    arguments = [p for p in program.params if p.name not in baked]
    workspace_bytes = workspace_end(workspace)
    entry_params = [_c_param(p, p.name in outputs) for p in arguments] + (
        ["void *CONVGEN_RESTRICT workspace"] if workspace_bytes else [])
    steps = [dict(name=f"{program.name}_prepare", stages=[f.name for f in program.prepare]),
             dict(name=f"{program.name}_run", stages=[f.name for f in program.run])] if program.prepare else []
    context = dict(
        name=program.name,
        guard=f"CONVGEN_{program.name.upper()}_H",
        doc_lines=program.doc.splitlines() or [program.name],
        params=entry_params,
        arg_names=[p.name for p in arguments] + (["workspace"] if workspace_bytes else []),
        args=[argument_doc(p, p.name in outputs) for p in arguments],
        baked=[argument_doc(baked_buffers[name], False) for name in baked],
        workspace_bytes=workspace_bytes,
        sizes=[dict(name=f"{program.name.upper()}_{suffix}", value=value, doc=doc) for suffix, value, doc in program.sizes],
        workspace=[dict(name=s.buffer.name, offset=s.offset, ctype=C_TYPES[s.buffer.dtype],
                        doc=argument_doc(s.buffer, False)) for s in workspace],
        single=single, functions=functions, steps=steps,
        stage_args=[b.name for b in takes],
    )
    header_includes = ["stddef.h"] + (["stdint.h"] if any(b.dtype in (ir.INT8, ir.INT32) for b in program.buffers)
                                      else [])
    header = render("c/kernel.h.j2", header_includes=header_includes, **context)
    bodies = [f.body for f in program.stages]
    tables = {b.name: b for stage in program.stages for b in ir.constant_buffers(stage.body)}
    tables = [c_table(emitter.c_array_name(b), b.dtype, b.values) for b in tables.values()]
    weights = [_baked_array(emitter.c_array_name(baked_buffers[name]), baked_buffers[name], array)
               for name, array in baked.items()]
    source = render("c/kernel.c.j2", includes=sorted(emitter.includes), tables=tables, weights=weights,
                    weight_attributes=_attributes(baking) if baked else "",
                    macros=[_MACROS[kind][1] for kind in sorted(emitter.macros)],
                    helpers=[helper_definition(key) for key in helpers_in_order(emitter.helpers)], **context)
    kinds = frozenset(loop.kind for body in bodies for loop in ir.find_all(body, ir.Loop))
    return CFiles(program.name, header, source, tuple(baked), kinds, tuple(f.name for f in program.stages),
                  len(takes), workspace_bytes, tuple(p.name for p in arguments))


def _unbaked_workspace(program: ir.Program, baked: set[str]) -> tuple[ir.Slot, ...]:
    """The workspace without the baked buffers (const data now): the prepared
    buffers left laid out again, then the scratch buffers as the program
    placed them (a memory plan may overlap them), moved to follow."""
    prepared = lay_out([s.buffer for s in program.prepared if s.buffer.name not in baked])
    if not program.scratch:
        return prepared
    start = -(-workspace_end(prepared) // ir.program.ALIGNMENT) * ir.program.ALIGNMENT
    shift = start - min(s.offset for s in program.scratch)
    return prepared + tuple(replace(s, offset=s.offset + shift) for s in program.scratch)


def c_table(name: str, dtype: str, values, attributes: str = "", storage: str = "static const") -> str:
    """A constant array at file scope: static const, so it lands in flash (.rodata)."""
    literals = c_literals(dtype, values)
    rows = [", ".join(literals[i:i + 12]) for i in range(0, len(literals), 12)]
    body = "".join(f"\n    {row}," for row in rows)
    return f"{storage} {C_TYPES[dtype]} {name}[{len(values)}]{attributes} = {{{body}\n}};"


def _baked_array(name: str, buffer: ir.Buffer, array: np.ndarray) -> str:
    array = np.asarray(array)
    if array.size != buffer.size or array.dtype != np.dtype(buffer.dtype):
        raise CodegenError(f"C backend: baked {buffer.name}: expected {buffer.size} {buffer.dtype} values "
                           f"(its storage layout {buffer.layout_name}); got {array.size} {array.dtype}")
    values = array.ravel().tolist()
    return c_table(name, buffer.dtype, values, " CONVGEN_WEIGHT_ATTRIBUTES")


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


def _c_param(buffer: ir.Buffer, writable: bool) -> str:
    const = "" if writable else "const "
    return f"{const}{C_TYPES[buffer.dtype]} *CONVGEN_RESTRICT {buffer.name}"


def argument_doc(buffer: ir.Buffer, is_output: bool) -> dict:
    """What a header says of an array: role, dtype, storage shape, layout (and padding, transform), bytes."""
    layout = buffer.layout_name if len(buffer.axes) > 1 else ""
    if buffer.pad:
        fill = buffer.pad_mode if buffer.pad_mode != "constant" else f"filled with {float_literal(buffer.pad_value)}"
        pads = ", ".join(f"{a} {lo}+{hi}" for a, (lo, hi) in zip(buffer.axes, buffer.pad) if lo or hi)
        layout += f" (padded {pads}, {fill})"
    if buffer.transform:
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


def _is_int(node: ir.Expr, value: int) -> bool:
    return isinstance(node, ir.IntImm) and node.value == value


class CLikeEmitter:
    """A walk over the IR that writes C-family statements and expressions.
    A renderer for another C-like language (CUDA) subclasses it and changes
    the hooks below: `language` (named in refusals), `loop_header` (the lines
    that open a loop of each kind), `declare_local` (a buffer allocated in
    the kernel, by memory scope) and `barrier`. The base refuses what no CPU
    runs: loops bound to GPU indices, shared memory, barriers."""

    language = "C"
    index_type = "ptrdiff_t"   # the C type of loop indices and index arithmetic

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
        return lines + [f"for ({self.index_type} {var} = 0; {var} < {node.extent}; ++{var}) {{"]

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
        if node.kind == "dot":
            self.dot_loop(node, depth)
        elif node.kind == "vectorized" and self.lanes_loop(node, depth):
            pass
        elif node.kind == "unrolled":
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

    def dot_loop(self, node: ir.Loop, depth: int) -> None:
        """A dot loop as calls of the packed helpers, sixteen elements a call
        where the extent allows and neither factor has an offset, else eight
        where it allows, else four (its extent is at most 64)."""
        found = ir.match_dot(node)
        if isinstance(found, str):
            raise CodegenError(f"{self.language} backend: dot loop {node.var.name}: {found}")
        plain = found.a.offset == found.b.offset == 0
        width = 16 if plain and node.extent % 16 == 0 else 8 if node.extent % 8 == 0 else ir.DOT_WIDTH
        self.helpers |= {("dot4", ir.INT8), ("dot8", ir.INT8), (f"dot{width}", ir.INT8)}
        if found.cond is not None:
            self.emit(depth, f"if ({self.expr(found.cond)}) {{")
            depth += 1
        acc = self.access(found.store.buffer, found.store.indices)
        for start in range(0, node.extent, width):
            at = {node.var.name: ir.IntImm(start)}
            a, b = (f"&{self.access(o.load.buffer, ir.simplify(ir.substitute(o.load, at), self.ranges).indices)}"
                    + ("" if width == 16 else f", {o.offset}") for o in (found.a, found.b))
            self.emit(depth, f"{acc} = {_HELPERS[(f'dot{width}', ir.INT8)][0]}({a}, {b}, {acc});")
        if found.cond is not None:
            self.emit(depth - 1, "}")

    def lanes_loop(self, node: ir.Loop, depth: int) -> bool:
        """A vectorized loop of four int8 multiply-accumulate lanes as one call
        of the lane helper; False (nothing written) for any other."""
        found = ir.match_lanes(node)
        if isinstance(found, str) or node.extent != ir.MAC_LANES:
            return False
        key = ("mac4_scalar" if found.b.broadcast else "mac4", ir.INT8)
        self.helpers.add(key)
        if found.cond is not None:
            self.emit(depth, f"if ({self.expr(found.cond)}) {{")
        at = {node.var.name: ir.IntImm(0)}
        acc, a, b = (f"&{self.access(load.buffer, ir.simplify(ir.substitute(load, at), self.ranges).indices)}"
                     for load in (ir.Load(found.store.buffer, found.store.indices), found.a.load, found.b.load))
        if found.b.broadcast:   # the value itself: (int32_t)b[..] + offset
            value = ir.binop("+", ir.Cast(found.b.load, ir.INT32), ir.IntImm(found.b.offset, ir.INT32))
            b = self.expr(ir.simplify(ir.substitute(value, at), self.ranges))
            call = f"{_HELPERS[key][0]}({acc}, {a}, {found.a.offset}, {b});"
        else:
            call = f"{_HELPERS[key][0]}({acc}, {a}, {found.a.offset}, {b}, {found.b.offset});"
        self.emit(depth + (found.cond is not None), call)
        if found.cond is not None:
            self.emit(depth, "}")
        return True

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
        """Arguments and workspace buffers keep their names; file-scope arrays
        (constant tables, baked weights) take the kernel's name first, so that
        kernels can share a file."""
        if buffer.scope == "constant" or buffer.name in self.baked:
            return f"{self.name}_{buffer.name}"
        return buffer.name

    def expr(self, node: ir.Expr, parent: int = 0) -> str:
        if isinstance(node, ir.IntImm):
            text = _int_literal(node.value)
            return text if node.value >= 0 or parent == 0 or text.startswith("(") else f"({text})"
        if isinstance(node, ir.Cast):
            ctype = self.index_type if node.type == ir.INDEX else C_TYPES[node.type]
            return f"({ctype}){self.expr(node.value, _CAST_PRECEDENCE)}"
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
        if node.op == "min" and node.dtype == ir.INT32 and _is_int(node.b, 127) and isinstance(node.a, ir.BinOp) \
                and node.a.op == "max" and _is_int(node.a.b, -128):
            self.helpers.add(("saturate8", ir.INT32))
            return f"{_HELPERS[('saturate8', ir.INT32)][0]}({self.expr(node.a.a)})"
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

    def emit(self, program: ir.Program, target: Target, baking: Baking | None = None) -> CFiles:
        return emit_c(program, baking)

    def load(self, emitted: CFiles, target: Target, workdir: Path | None = None) -> "CLoaded":
        flags = (target.simd_flags if "vectorized" in emitted.kinds else ()) + \
                (target.openmp_flags if "parallel" in emitted.kinds else ())
        library, image = load_c(emitted.files, emitted.name, target, workdir, flags)
        return CLoaded(self._stages(emitted, library), library, image)

    def restore(self, emitted: CFiles, image: bytes, target: Target, workdir: Path | None = None) -> "CLoaded":
        if workdir is not None:
            workdir.mkdir(parents=True, exist_ok=True)
            for file_name, text in emitted.files.items():
                (workdir / file_name).write_text(text)
            (workdir / f"{emitted.name}.so").write_bytes(image)
        library = load_c_image(image, emitted.name)
        return CLoaded(self._stages(emitted, library), library, image)

    @staticmethod
    def _stages(emitted: CFiles, library) -> tuple["CStage", ...]:
        stages = []
        for name in emitted.stages:
            function = getattr(library, name)
            function.argtypes = [ctypes.c_void_p] * emitted.params
            function.restype = None
            stages.append(CStage(function, "parallel" in emitted.kinds))
        return tuple(stages)


@dataclass
class CLoaded:
    stages: tuple["CStage", ...]   # the program's stages, prepare then run
    library: object                # the loaded shared object; kept alive with the kernel
    image: bytes                   # the shared object's bytes, for the kernel cache


@dataclass
class CStage:
    function: object
    parallel: bool

    @property
    def convention(self) -> str:
        return "c-openmp" if self.parallel else "serial"

    def launch(self, pointers: list[int], threads: int) -> None:
        if self.parallel:
            openmp().omp_set_num_threads(threads)
        self.function(*pointers)
