"""The loop-nest IR: the one source of truth between lowering and the backends.

- nodes: buffers (logical axes, a storage layout, a scope), expressions,
  statements, stages, kernels; all frozen, compared structurally.
- walk: a visitor, a rewriter that rebuilds only what changes, helpers.
- simplify: interval bounds, the simplifier, and `flat_index`, the one place
  where a layout becomes an address (so a layout change is data, not code).
- printer: readable pseudo-code.
- verify: the rules every kernel keeps, checked after lowering, after each
  schedule step and after each pass.
- program: a kernel split into stage functions (prepare, run) over one
  argument list, its workspace laid out.
- dot: the int8 multiply-accumulates packed instructions run (a `dot` loop; a vectorized one, lane-wise).
- signature: a kernel's arguments as its caller passes them, read from its
  parameters, and its workspace size.
"""

from .nodes import *  # noqa: F401,F403
from .nodes import __all__ as _nodes_all
from .printer import format_buffer, format_expr, format_func, format_stmt
from .simplify import (Ranges, bounds, conjuncts, flat_index, hoist_conditions, linear_coefficient, simplify,
                       truncation_is_floor)
from .dot import DOT_WIDTH, MAC_LANES, Dot, added_product, match_dot, match_lanes
from .program import Program, Slot, split, with_stages
from .signature import Argument, Signature, signature
from .verify import VerifyError, verify
from .walk import (Rewriter, Visitor, children, constant_buffers, find_all, free_vars, loops_by_name, rebind,
                   substitute, with_prefix)

__all__ = [*_nodes_all, "constant_buffers", "format_buffer", "format_expr", "format_func", "format_stmt", "Ranges", "bounds",
           "flat_index", "hoist_conditions", "linear_coefficient", "simplify", "truncation_is_floor", "Rewriter", "Visitor", "children", "find_all",
           "free_vars", "loops_by_name", "rebind", "substitute", "with_prefix", "verify", "VerifyError", "Argument", "Signature", "signature",
           "Program", "Slot", "split", "with_stages", "DOT_WIDTH", "MAC_LANES", "Dot", "added_product", "match_dot", "match_lanes"]
