"""LLVM backend: a walk over the IR that builds an llvmlite module.

Each kernel is `void name(float* noalias x, ...)`; indices are i64, loops are
counted loops with a phi, local buffers are allocas in the entry block (LLVM's
SROA turns them into registers). Optimisation and JIT compilation are the
runtime's job; this module only emits IR text.
"""

from __future__ import annotations

from llvmlite import ir as ll

from .. import ir
from ..errors import CodegenError
from ..target import Target

I1 = ll.IntType(1)
I64 = ll.IntType(64)
F32 = ll.FloatType()
_TYPES = {ir.INDEX: I64, ir.FLOAT32: F32, ir.BOOL: I1}
_INT_OPS = {"+": "add", "-": "sub", "*": "mul"}
_FLOAT_OPS = {"+": "fadd", "-": "fsub", "*": "fmul", "/": "fdiv"}


def emit_llvm(func: ir.Func, target: Target) -> str:
    """The kernel as LLVM IR text, for the target's triple."""
    module = ll.Module(name=func.name)
    module.triple = target.triple
    return str(_LLVMEmitter(module, func).module)


class _LLVMEmitter:
    def __init__(self, module: ll.Module, func: ir.Func):
        self.module = module
        fn_type = ll.FunctionType(ll.VoidType(), [ll.PointerType() for _ in func.params])
        self.function = ll.Function(module, fn_type, name=func.name)
        self.function.attributes.add("nounwind")
        self.pointers: dict[str, ll.Value] = {}
        for arg, buffer in zip(self.function.args, func.params):
            arg.name = buffer.name
            arg.add_attribute("noalias")  # parameters never overlap (the runtime checks)
            self.pointers[buffer.name] = arg
        entry = self.function.append_basic_block("entry")
        self.allocas = ll.IRBuilder(entry)  # allocas go first in the entry block
        body = self.function.append_basic_block("body")
        self.allocas.branch(body)
        self.allocas.position_at_start(entry)
        self.builder = ll.IRBuilder(body)
        self.vars: dict[str, ll.Value] = {}
        self.ranges: ir.Ranges = {}
        self.stmt(func.body)
        self.builder.ret_void()

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
        if node.kind != "serial":
            raise CodegenError(f"LLVM backend: loop {node.var.name}: kind '{node.kind}' is not supported yet")
        name = node.var.name
        b = self.builder
        before = b.block
        header = self.function.append_basic_block(f"{name}.header")
        body = self.function.append_basic_block(f"{name}.body")
        done = self.function.append_basic_block(f"{name}.done")
        b.branch(header)
        b.position_at_end(header)
        index = b.phi(I64, name=name)
        index.add_incoming(ll.Constant(I64, 0), before)
        b.cbranch(b.icmp_signed("<", index, ll.Constant(I64, node.extent)), body, done)
        b.position_at_end(body)
        self.vars[name], self.ranges[name] = index, (0, node.extent - 1)
        self.stmt(node.body)
        del self.vars[name], self.ranges[name]
        index.add_incoming(b.add(index, ll.Constant(I64, 1), name=f"{name}.next", flags=("nsw",)), b.block)
        b.branch(header)
        b.position_at_end(done)

    def stmt_Store(self, node: ir.Store) -> None:
        self.builder.store(self.expr(node.value), self.address(node.buffer, node.indices))

    def stmt_If(self, node: ir.If) -> None:
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

    def stmt_Allocate(self, node: ir.Allocate) -> None:
        buffer = node.buffer
        self.pointers[buffer.name] = self.allocas.alloca(
            _TYPES[buffer.dtype], size=ll.Constant(I64, buffer.size), name=buffer.name)
        self.stmt(node.body)
        del self.pointers[buffer.name]

    # -- expressions --------------------------------------------------------
    def address(self, buffer: ir.Buffer, indices) -> ll.Value:
        if buffer.name not in self.pointers:
            raise CodegenError(f"LLVM backend: buffer {buffer.name} is neither a parameter nor allocated")
        offset = self.expr(ir.flat_index(buffer, indices))
        return self.builder.gep(self.pointers[buffer.name], [offset], inbounds=True,
                                source_etype=_TYPES[buffer.dtype])

    def expr(self, node: ir.Expr) -> ll.Value:
        if isinstance(node, ir.IntImm):
            return ll.Constant(I64, node.value)
        if isinstance(node, ir.BoolImm):
            return ll.Constant(I1, int(node.value))
        if isinstance(node, ir.FloatImm):
            return ll.Constant(_TYPES[node.dtype], node.value)
        if isinstance(node, ir.Var):
            if node.name not in self.vars:
                raise CodegenError(f"LLVM backend: variable {node.name} is used outside its loop")
            return self.vars[node.name]
        if isinstance(node, ir.Load):
            return self.builder.load(self.address(node.buffer, node.indices), typ=_TYPES[node.dtype])
        if isinstance(node, ir.Select):
            return self.builder.select(self.expr(node.cond), self.expr(node.true_value),
                                       self.expr(node.false_value))
        if isinstance(node, ir.BinOp):
            return self.binop(node)
        raise CodegenError(f"LLVM backend: cannot emit expression {type(node).__name__}")

    def binop(self, node: ir.BinOp) -> ll.Value:
        b = self.builder
        x, y = self.expr(node.a), self.expr(node.b)
        op, dtype = node.op, node.a.dtype
        if op == "&&":
            return b.and_(x, y)
        if op == "||":
            return b.or_(x, y)
        if dtype == ir.INDEX:
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
            signature = ll.FunctionType(x.type, [x.type, x.type])
            intrinsic = self.module.declare_intrinsic(f"llvm.{op}num", [x.type], signature)
            return b.call(intrinsic, [x, y])
        raise CodegenError(f"LLVM backend: cannot emit {op!r} on {dtype}")

    def require_nonnegative(self, node: ir.BinOp) -> None:
        if not ir.truncation_is_floor(node, self.ranges):
            raise CodegenError(f"LLVM backend: cannot prove {ir.format_expr(node)} has a non-negative "
                               f"dividend and a positive divisor")
