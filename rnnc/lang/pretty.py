"""Print an AST back as cell-language text (``parse(pretty(ast)) == ast``)."""

from __future__ import annotations

from rnnc.lang import ast

__all__ = ["format_cell", "format_expr", "format_module"]

# Binding power of each operator: (level, level of the left operand, of the right one).
_LEVELS = {
    "<": (1, 2, 2),
    ">": (1, 2, 2),
    "<=": (1, 2, 2),
    ">=": (1, 2, 2),
    "+": (2, 2, 3),
    "-": (2, 2, 3),
    "*": (3, 3, 4),
    "/": (3, 3, 4),
    "@": (3, 3, 4),
    "**": (5, 6, 4),
}


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _level(e: ast.Expr) -> int:
    if isinstance(e, ast.BinOp):
        return _LEVELS[e.op][0]
    if isinstance(e, ast.Neg):
        return 4
    if isinstance(e, ast.Number) and e.value < 0:
        return 4
    return 6


def format_expr(e: ast.Expr, need: int = 0) -> str:
    """The text of an expression, with parentheses only where precedence needs them."""
    if isinstance(e, ast.Number):
        text = _number(e.value)
    elif isinstance(e, ast.Name):
        text = e.id
    elif isinstance(e, ast.Primed):
        text = e.id + "'"
    elif isinstance(e, ast.Neg):
        text = "-" + format_expr(e.operand, 4)
    elif isinstance(e, ast.Call):
        text = f"{e.func}({', '.join(format_expr(a) for a in e.args)})"
    elif isinstance(e, ast.BinOp):
        _, left, right = _LEVELS[e.op]
        op = e.op if e.op == "**" else f" {e.op} "
        text = format_expr(e.left, left) + op + format_expr(e.right, right)
    else:
        raise TypeError(e)
    return f"({text})" if _level(e) < need else text


def _shape(shape: ast.Shape) -> str:
    return str(shape)


def _statement(s: ast.Statement) -> str:
    if isinstance(s, ast.StateDecl):
        init = s.init if isinstance(s.init, str) else _number(s.init)
        return f"state {s.name}: {_shape(s.shape)} = {init}"
    if isinstance(s, ast.ParamDecl):
        text = f"param {s.name}"
        if s.shape is not None:
            text += f": {_shape(s.shape)}"
        if s.init is not None:
            text += f" ~ {s.init.name}"
            if s.init.args:
                text += "(" + ", ".join(_number(a) for a in s.init.args) + ")"
        return text
    prime = "'" if s.primed else ""
    return f"{s.target}{prime} = {format_expr(s.value)}"


def format_cell(cell: ast.Cell) -> str:
    ports = [
        ", ".join(f"{p.name}: {_shape(p.shape)}" for p in side)
        for side in (cell.inputs, cell.outputs)
    ]
    lines = [f"cell {cell.name}({ports[0]}) -> ({ports[1]}):"]
    if cell.doc:
        lines.append('    """' + cell.doc.replace("\n", "\n    ") + '"""')
    lines += ["    " + _statement(s) for s in cell.body]
    return "\n".join(lines) + "\n"


def format_module(module: ast.Module) -> str:
    return "\n".join(format_cell(c) for c in module.cells)
