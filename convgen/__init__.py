"""convgen: a hardware-aware compiler for convolution layers.

    import convgen
    spec = convgen.load_spec("specs/resnet_3x3_64.yaml")
    kernel = convgen.build(spec, target="llvm")     # or "c"
    x = convgen.empty(spec.input_shape)              # like np.empty, 64-byte aligned: faster kernels
    y = kernel(x, w, b)                              # float32 NumPy arrays (any alignment)
    s = convgen.Schedule.for_spec(spec).split("ow", 8)  # schedules: see docs/schedules.md
    convgen.reference(spec, x, w, b)                 # float64 NumPy meaning of the layer
    net = convgen.build("specs/networks/ds_cnn.yaml")  # a network spec: one program, net(x) -> y
"""

from .check import CheckResult, check, check_network
from .errors import CodegenError, CompileError, ConvgenError, ConvgenWarning, KernelCallError, ScheduleError, SpecError
from .lower import lower
from .reference import reference
from .driver import build
from .network import Network, load_network
from .runtime import Kernel, NetworkKernel, empty
from .schedule import Schedule
from .spec import Spec, load_spec

__all__ = [
    "load_spec", "load_network", "build", "empty", "reference", "check", "check_network", "lower",
    "Spec", "Network", "Kernel", "NetworkKernel", "CheckResult", "Schedule",
    "ConvgenError", "ConvgenWarning", "SpecError", "CodegenError", "CompileError", "KernelCallError", "ScheduleError",
]
