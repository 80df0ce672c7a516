"""Error classes. Every error a user can cause derives from ConvgenError, so the
CLI can print it as one message without a traceback."""


class ConvgenError(Exception):
    """Base of the errors that bad input (a spec, a schedule, arguments) can cause."""


class SpecError(ConvgenError):
    """A spec file is malformed. Holds one line per problem found in the file."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class CodegenError(ConvgenError):
    """A backend met IR it cannot render."""


class CompileError(ConvgenError):
    """An external compiler (cc, LLVM) refused emitted code."""


class KernelCallError(ConvgenError):
    """A kernel was called with arrays of the wrong shape or dtype."""
