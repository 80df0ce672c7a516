"""The IR verifier: what every kernel must satisfy, checked after lowering,
after each schedule step (tests, `convgen show --verify-each-step`) and
before a backend renders it.

- loop names are unique, and every variable is bound by an enclosing loop;
- every buffer read or written is a parameter, a declared workspace buffer,
  a constant table, or a local allocated around the access; stage names are
  unique, and stages stand only at the top of the body;
- types agree (a store's value has its buffer's type; a loop extent is at
  least one);
- an index is within its axis wherever the simplifier's interval bounds can
  tell: accesses under a condition (a guard) are left to it;
- a barrier stands between loops bound to GPU threads, not inside one;
- a shared-memory buffer is allocated outside the loops bound to GPU threads
  (one per block), a local one is not in shared memory's place.
"""

from __future__ import annotations

from .nodes import Allocate, Barrier, Buffer, Expr, Func, If, Load, Loop, Node, Seq, Stage, Store, Var
from .simplify import Ranges, bounds
from .walk import children
from ..errors import ConvgenError


class VerifyError(ConvgenError):
    """A kernel breaks a rule of the IR; holds one line per problem."""

    def __init__(self, where: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"{where}: the IR is not well formed: " + "; ".join(problems))


def verify(func: Func, where: str = "") -> Func:
    """func itself when it is well formed; else a VerifyError naming `where` and each problem."""
    checker = _Verifier(func)
    names = [stage.name for stage in func.stages]
    for name in sorted({n for n in names if names.count(n) > 1}):
        checker.note(f"two stages are named {name!r}")
    for buffer in func.workspace:
        if buffer.scope != "workspace":
            checker.note(f"workspace buffer {buffer.name!r} has scope {buffer.scope!r}")
    for stage in func.stages:
        checker.stmt(stage.body)
    if checker.problems:
        raise VerifyError(where or func.name, list(dict.fromkeys(checker.problems)))
    return func


class _Verifier:
    def __init__(self, func: Func):
        self.problems: list[str] = []
        self.buffers: dict[str, Buffer] = {p.name: p for p in func.params + func.workspace}
        self.ranges: Ranges = {}
        self.loop_names: set[str] = set()
        self.guarded = 0          # enclosing conditions: bounds there are the guard's business
        self.gpu_threads = 0      # enclosing loops bound to GPU threads

    def note(self, problem: str) -> None:
        self.problems.append(problem)

    # -- statements ---------------------------------------------------------
    def stmt(self, node: Node) -> None:
        getattr(self, "stmt_" + type(node).__name__)(node)

    def stmt_Seq(self, node: Seq) -> None:
        for s in node.body:
            self.stmt(s)

    def stmt_Loop(self, node: Loop) -> None:
        name = node.var.name
        if name in self.loop_names:
            self.note(f"two loops are named {name!r}")
        self.loop_names.add(name)
        if node.extent < 1:
            self.note(f"loop {name} has extent {node.extent}; expected at least 1")
        self.ranges[name] = (0, node.extent - 1)
        threads = node.kind == "gpu_thread"
        self.gpu_threads += threads
        self.stmt(node.body)
        self.gpu_threads -= threads
        del self.ranges[name]

    def stmt_If(self, node: If) -> None:
        self.expr(node.cond)
        self.guarded += 1
        self.stmt(node.then)
        if node.orelse is not None:
            self.stmt(node.orelse)
        self.guarded -= 1

    def stmt_Allocate(self, node: Allocate) -> None:
        name = node.buffer.name
        if node.buffer.scope == "shared" and self.gpu_threads:
            self.note(f"shared buffer {name!r} is allocated inside a loop bound to GPU threads; shared memory "
                      f"belongs to the block, so allocate it outside them")
        if node.buffer.scope not in ("local", "shared"):
            self.note(f"buffer {name!r} is allocated in the kernel with scope {node.buffer.scope!r}; "
                      f"expected local or shared")
        outer = self.buffers.get(name)
        if outer is not None:
            self.note(f"local buffer {name!r} hides another buffer of that name")
        self.buffers[name] = node.buffer
        self.stmt(node.body)
        if outer is None:
            del self.buffers[name]
        else:
            self.buffers[name] = outer

    def stmt_Store(self, node: Store) -> None:
        self.access(node.buffer, node.indices, "store to")
        if node.buffer.scope == "constant":
            self.note(f"store to constant table {node.buffer.name!r}")
        self.expr(node.value)

    def stmt_Stage(self, node: Stage) -> None:
        self.note(f"stage {node.name!r} stands inside another statement; stages are the body's top level")
        self.stmt(node.body)

    def stmt_Barrier(self, node: Barrier) -> None:
        if self.gpu_threads:
            self.note("a barrier inside a loop bound to GPU threads: each thread must reach it, so it belongs "
                      "between the thread loops, not in one")

    # -- expressions --------------------------------------------------------
    def expr(self, node: Expr) -> None:
        if isinstance(node, Var) and node.name not in self.ranges:
            self.note(f"variable {node.name!r} is used outside any loop that binds it")
        if isinstance(node, Load):
            self.access(node.buffer, node.indices, "read of")
        for child in children(node):
            self.expr(child)

    def access(self, buffer: Buffer, indices: tuple[Expr, ...], what: str) -> None:
        for index in indices:
            self.expr(index)
        known = self.buffers.get(buffer.name)
        if buffer.scope == "constant":
            pass   # a table travels with the access itself
        elif known is None:
            self.note(f"{what} {buffer.name!r}, which is neither a parameter, a workspace buffer nor allocated "
                      f"around the access")
        elif known != buffer:
            self.note(f"{what} {buffer.name!r} with another shape, layout or type than it was declared with")
        if self.guarded:
            return
        for axis, extent, index in zip(buffer.axes, buffer.shape, indices):
            interval = bounds(index, self.ranges)
            if interval is not None and (interval[0] < 0 or interval[1] > extent - 1):
                self.note(f"{what} {buffer.name}: index {axis} spans {interval[0]}..{interval[1]}, outside "
                          f"0..{extent - 1}")
