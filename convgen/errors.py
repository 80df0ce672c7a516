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


class ScheduleError(ConvgenError):
    """A schedule step was refused: it names the step, the primitive, the
    requirement that failed and, where one exists, a legal alternative.
    `nest` holds the loop nest the step was applied to, for the detailed view."""

    def __init__(self, primitive: str, message: str, alternative: str = "", nest: str = "", where: str = ""):
        self.primitive, self.message, self.alternative = primitive, message, alternative
        self.nest, self.where = nest, where
        super().__init__(self._line())

    def _line(self) -> str:
        prefix = f"{self.where}: " if self.where else ""
        hint = f"; {self.alternative}" if self.alternative else ""
        return f"{prefix}{self.primitive}: {self.message}{hint}"

    def located(self, where: str, nest: str) -> "ScheduleError":
        """The same refusal, naming the step (file and index) and the nest it met."""
        return ScheduleError(self.primitive, self.message, self.alternative, nest, where)

    def detailed(self) -> str:
        return self._line() + (f"\nThe loop nest it was applied to:\n{self.nest}" if self.nest else "")


class ConvgenWarning(UserWarning):
    """Something a user should know that does not stop the build: e.g. no
    default schedule fits a layer, so it runs as the naive loop nest."""
