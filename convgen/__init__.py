"""convgen: a hardware-aware compiler for convolution layers.

    import convgen
    spec = convgen.load_spec("specs/resnet_3x3_64.yaml")
    kernel = convgen.build(spec, target="llvm")     # or "c"
    x = convgen.empty(spec.input_shape)              # like np.empty, 64-byte aligned: faster kernels
    y = kernel(x, w, b)                              # float32 NumPy arrays (any alignment)
    s = convgen.Schedule.for_spec(spec).split("ow", 8)  # schedules: see docs/schedules.md
    convgen.reference(spec, x, w, b)                 # float64 NumPy meaning of the layer
"""

from .check import CheckResult, check
from .errors import CodegenError, CompileError, ConvgenError, ConvgenWarning, KernelCallError, ScheduleError, SpecError
from .lower import lower
from .reference import reference
from .driver import build
from .runtime import Kernel, empty
from .schedule import Schedule
from .spec import Spec, load_spec

__all__ = [
    "load_spec", "build", "empty", "reference", "check", "lower",
    "Spec", "Kernel", "CheckResult", "Schedule",
    "ConvgenError", "ConvgenWarning", "SpecError", "CodegenError", "CompileError", "KernelCallError", "ScheduleError",
]
