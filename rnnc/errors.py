"""Errors and warnings of rnnc, and the spans they point at.

Every error a user can meet is an :class:`RnncError`. Errors about a cell carry the
:class:`Span` of the offending text (a ``.cell`` file or the user's Python line) and
render it with a caret under the place, followed by the fix and the link to the
error's section of docs/errors.md::

    gru.cell:7:9: error: shape mismatch: `h @ W_hr` has shape [H] but `x` has shape [I]
        r = sigmoid(x + h @ W_hr)
                    ^
    fix: make both operands the same shape, e.g. multiply `x` by a matrix first
    see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#shapemismatcherror

A warning about a cell is an :class:`RnncWarning` (a subclass per kind), rendered the
same way.

This module imports nothing of rnnc.
"""

from __future__ import annotations

import linecache
from dataclasses import dataclass, field

__all__ = [
    "ArgumentCountError",
    "CellSyntaxError",
    "CheckpointError",
    "DslError",
    "DuplicateDefinitionError",
    "InputDtypeError",
    "InputShapeError",
    "InputValueError",
    "MissingDimensionError",
    "MissingNextStateError",
    "MissingOutputError",
    "MisspelledNameWarning",
    "NextStateShapeError",
    "NonPositiveArgumentWarning",
    "OptionError",
    "RnncError",
    "RnncWarning",
    "ShapeInferenceError",
    "ShapeMismatchError",
    "Span",
    "TrainingDivergedError",
    "UnknownDimensionError",
    "UnknownNameError",
    "UnusedInputWarning",
    "UnusedParameterWarning",
    "UseBeforeDefinitionError",
]

DOCS = "https://github.com/rnnc/rnnc/blob/main/docs/errors.md"


def _render(
    level: str,
    message: str,
    span: Span | None,
    fix: str | None,
    anchor: str,
    notes: tuple[tuple[Span, str], ...] = (),
) -> str:
    """The text of an error (``level`` "error") or a warning: the place and the message,
    the source line with a caret, the notes, the fix and the link to the section
    ``anchor`` of docs/errors.md."""
    where = f"{span}: " if span else ""
    parts = [f"{where}{level}: {message}"]
    if span and (caret := span.render()):
        parts.append(caret)
    for note_span, text in notes:
        parts.append(f"{note_span}: note: {text}")
        if caret := note_span.render():
            parts.append(caret)
    if fix:
        parts.append(f"fix: {fix}")
    parts.append(f"see: {DOCS}#{anchor}")
    return "\n".join(parts)


@dataclass(frozen=True)
class Span:
    """A region of source text: 1-based line and column, end exclusive.

    ``text`` holds the source the span points into (the whole file) when it is not a
    file on disk; otherwise the line is read with :mod:`linecache`.
    """

    filename: str
    line: int
    column: int
    end_line: int
    end_column: int
    text: str | None = field(default=None, compare=False, repr=False)

    def source_line(self) -> str:
        if self.text is not None:
            # Lines end at "\n" only, as the parser counts them (str.splitlines would
            # also break at a form feed or U+2028, which a cell may hold in a comment).
            lines = self.text.split("\n")
            return lines[self.line - 1].removesuffix("\r") if 0 < self.line <= len(lines) else ""
        return linecache.getline(self.filename, self.line).rstrip("\n")

    def render(self) -> str:
        """The source line with a caret (``^^^``) under the span."""
        line = self.source_line()
        if not line:
            return ""
        end = self.end_column if self.end_line == self.line else len(line) + 1
        width = max(1, min(end, len(line) + 1) - self.column)
        # Keep the tabs of the line, so that the caret lines up however they are shown.
        pad = "".join(c if c == "\t" else " " for c in line[: self.column - 1])
        return f"    {line}\n    {pad}{'^' * width}"

    def __str__(self) -> str:
        return f"{self.filename}:{self.line}:{self.column}"


class RnncError(Exception):
    """The root of every error rnnc raises on purpose.

    ``message`` says what is wrong, ``span`` where (or None for errors about Python
    arguments), ``fix`` how to mend it; ``notes`` are further ``(span, text)`` places
    (the other side of a conflict). ``line`` and ``column`` copy the span's.
    """

    anchor = "rnncerror"

    def __init__(
        self,
        message: str,
        span: Span | None = None,
        fix: str | None = None,
        notes: tuple[tuple[Span, str], ...] = (),
    ) -> None:
        self.message = message
        self.span = span
        self.fix = fix
        self.notes = tuple(notes)
        super().__init__(self.render())

    @property
    def line(self) -> int | None:
        return self.span.line if self.span else None

    @property
    def column(self) -> int | None:
        return self.span.column if self.span else None

    @property
    def filename(self) -> str | None:
        return self.span.filename if self.span else None

    def render(self) -> str:
        return _render("error", self.message, self.span, self.fix, self.anchor, self.notes)


def _kind(name: str, doc: str, base: type) -> type:
    """A subclass of ``base`` whose section of docs/errors.md is ``#name`` in lower case."""
    return type(name, (base,), {"__doc__": doc, "anchor": name.lower(), "__module__": __name__})


def _error(name: str, doc: str, base: type[RnncError] = RnncError) -> type[RnncError]:
    return _kind(name, doc, base)


CellSyntaxError = _error("CellSyntaxError", "The text of a cell does not follow the grammar.")
DslError = _error(
    "DslError",
    "Python that the cell language cannot express (in a function decorated with @rnnc.cell).",
    CellSyntaxError,
)
UnknownNameError = _error(
    "UnknownNameError", "A function, a primed state or a dimension that does not exist."
)
DuplicateDefinitionError = _error(
    "DuplicateDefinitionError", "A name is defined twice in one cell (or shadows an input)."
)
UseBeforeDefinitionError = _error(
    "UseBeforeDefinitionError", "A binding or next state is read on a line above its definition."
)
ShapeMismatchError = _error(
    "ShapeMismatchError", "Two shapes that must agree do not (both places are named)."
)
NextStateShapeError = _error(
    "NextStateShapeError",
    "The next value of a state has another shape than the state.",
    ShapeMismatchError,
)
ShapeInferenceError = _error(
    "ShapeInferenceError", "The shape of a parameter cannot be inferred from its uses."
)
MissingNextStateError = _error(
    "MissingNextStateError", "A state is declared but its next value (`h' = ...`) is not."
)
MissingOutputError = _error(
    "MissingOutputError", "An output named in the cell's header is never assigned."
)
ArgumentCountError = _error(
    "ArgumentCountError", "A built-in function is called with the wrong number of arguments."
)
UnknownDimensionError = _error(
    "UnknownDimensionError", "A dimension given to a layer does not occur in the cell."
)
MissingDimensionError = _error(
    "MissingDimensionError", "A dimension of the cell was not given a size."
)
InputShapeError = _error(
    "InputShapeError", "An array or tensor passed to a layer has the wrong shape."
)
InputDtypeError = _error(
    "InputDtypeError", "An array or tensor passed to a layer has the wrong dtype."
)
InputValueError = _error("InputValueError", "An input holds NaN or inf where none is allowed.")
OptionError = _error("OptionError", "An option passed to rnnc has a value it cannot take.")
CheckpointError = _error("CheckpointError", "A checkpoint file is missing, truncated or corrupt.")
TrainingDivergedError = _error("TrainingDivergedError", "The training loss became NaN or infinite.")


class RnncWarning(UserWarning):
    """The root of rnnc's warnings about a cell: the cell works, but something in it is
    most likely a mistake. Each kind is a subclass, so that it can be filtered on its own
    (``warnings.filterwarnings("ignore", category=rnnc.errors.UnusedInputWarning)``).

    ``message``, ``span`` and ``fix`` are as in :class:`RnncError`; the text ends with the
    link to the warning's section of docs/errors.md.
    """

    anchor = "rnncwarning"

    def __init__(self, message: str, span: Span | None = None, fix: str | None = None):
        self.message = message
        self.span = span
        self.fix = fix
        super().__init__(_render("warning", message, span, fix, self.anchor))


def _warning(name: str, doc: str) -> type[RnncWarning]:
    return _kind(name, doc, RnncWarning)


UnusedInputWarning = _warning("UnusedInputWarning", "An input of the cell is never read.")
UnusedParameterWarning = _warning(
    "UnusedParameterWarning", "A parameter declared with `param` is never used."
)
MisspelledNameWarning = _warning(
    "MisspelledNameWarning",
    "A name that becomes a parameter is one typing error away from the name of a value.",
)
NonPositiveArgumentWarning = _warning(
    "NonPositiveArgumentWarning",
    "`log` or `sqrt` of a value that is never positive, or that is 0 for a range of inputs.",
)
