"""The gate expression language: a small, safe subset of Python expressions.

The text is parsed with `ast`, every node is checked against an allow-list, and the tree is
compiled into nested closures. Nothing is ever passed to eval/exec/compile. Evaluation errors
(a missing field, division by zero, a type error) become `ExpressionError`: a row error.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from typing import Any

from engine.errors import EngineError

Fn = Callable[[Mapping[str, Any]], Any]


class ExpressionSyntaxError(EngineError):
    """The expression uses something the language does not allow (raised at settings load)."""


class ExpressionError(EngineError):
    """Evaluating the expression on a row failed: a row error, never a crash."""


_MAX_REPEAT = 1_000_000


def _weight(value: Any, limit: int) -> int:
    """How many items `value` holds counting nested ones (what `str()` of it would spell out),
    counting no further than past `limit`."""
    if isinstance(value, str):
        return len(value)
    if not isinstance(value, list | tuple | set | dict):
        return 1
    total = len(value)
    items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
    for item in items:
        if total > limit:
            break
        if isinstance(item, str | list | tuple | set | dict):
            total += _weight(item, limit - total)
    return total


def _multiply(a: Any, b: Any) -> Any:
    # `'x' * row['n']` must not be able to exhaust memory: repetition is capped, counting nested
    # items, so `[[0] * 1000000] * 1000000` (cheap itself, but not to print) is refused too.
    for seq, n in ((a, b), (b, a)):
        repeats = isinstance(seq, str | list | tuple) and isinstance(n, int) and not isinstance(n, bool) and n > 0
        if repeats and _weight(seq, _MAX_REPEAT) * n > _MAX_REPEAT:
            raise ExpressionError(f"repetition result too large (over {_MAX_REPEAT} items)")
    return a * b


def _modulo(a: Any, b: Any) -> Any:
    # `%` is arithmetic here; printf-style formatting (`'%999999999d' % 1`) could build huge strings.
    if isinstance(a, str | bytes):
        raise ExpressionError("'%' is for numbers; string formatting is not supported")
    return a % b


_BINOPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: _multiply,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: _modulo,
}
_CMPOPS: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "len": len,
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "abs": abs,
}
_CONSTANT_NAMES = {"True": True, "False": False, "None": None}

_DESCRIBE: dict[type[ast.AST], str] = {
    ast.Lambda: "lambda is not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "comprehensions are not allowed",
    ast.Attribute: "attribute access is not allowed (only row.get(...))",
    ast.NamedExpr: "assignment expressions (:=) are not allowed",
    ast.JoinedStr: "f-strings are not allowed",
    ast.Slice: "slices are not allowed",
    ast.Starred: "starred expressions are not allowed",
    ast.Await: "await is not allowed",
    ast.Yield: "yield is not allowed",
}


class Expression:
    """A compiled expression. `evaluate(row)` returns its value or raises ExpressionError.
    `fields` are the row keys it names (`row['k']`, `row.get('k')`); None when a key is
    computed, so which fields it reads cannot be known before it runs."""

    __slots__ = ("_fn", "fields", "source")

    def __init__(self, source: str, fn: Fn, fields: frozenset[str] | None) -> None:
        self.source = source
        self._fn = fn
        self.fields = fields

    def evaluate(self, row: Mapping[str, Any]) -> Any:
        try:
            return self._fn(row)
        except ExpressionError:
            raise
        except KeyError as e:
            raise ExpressionError(f"field {e.args[0]!r} not found") from None
        except ZeroDivisionError:
            raise ExpressionError("division by zero") from None
        except Exception as e:  # TypeError, ValueError, OverflowError, RecursionError, ...
            raise ExpressionError(f"{type(e).__name__}: {e}") from None

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"


def compile_expression(source: str) -> Expression:
    """Check `source` against the language and compile it; raise ExpressionSyntaxError naming what is refused."""
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as e:
        raise ExpressionSyntaxError(f"not a valid expression: {e.msg} (column {e.offset})") from None
    except (ValueError, RecursionError, MemoryError) as e:  # NUL bytes; absurd nesting
        raise ExpressionSyntaxError(f"not a valid expression: {e}") from None
    try:
        return _check_and_compile(source, tree)
    except (RecursionError, MemoryError):
        raise ExpressionSyntaxError("the expression is nested too deeply") from None


def _check_and_compile(source: str, tree: ast.Expression) -> Expression:
    # Name the most dangerous thing first: `__import__('os').system(...)` is refused for
    # `__import__`, not for the attribute call wrapped around it.
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id not in _FUNCTIONS:
            raise ExpressionSyntaxError(f"calls to {node.func.id!r} are not allowed (only {', '.join(_FUNCTIONS)})")
        if isinstance(node, ast.Name) and node.id.startswith("__"):
            raise ExpressionSyntaxError(f"the name {node.id!r} is not allowed")
    for node in ast.walk(tree):  # then the constructs that are refused whatever they contain
        if type(node) in _DESCRIBE and not isinstance(node, ast.Attribute):
            raise ExpressionSyntaxError(_DESCRIBE[type(node)])
    return Expression(source, _compile(tree.body), _fields(tree))


def _fields(tree: ast.Expression) -> frozenset[str] | None:
    names: set[str] = set()
    # `row` is either indexed (`row['k']`), asked (`row.get('k')`), or used whole (`'k' in row`).
    indexed = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Subscript)}
    asked = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    for node in ast.walk(tree):
        key: ast.AST | None = None
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "row":
            key = node.slice
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            key = node.args[0]  # row.get(key, ...): the only method call the language allows
        elif isinstance(node, ast.Name) and node.id == "row" and id(node) not in indexed | asked:
            return None
        if key is not None:
            if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                return None
            names.add(key.value)
    return frozenset(names)


def _compile(node: ast.AST) -> Fn:
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bytes | complex) or value is Ellipsis:
            raise ExpressionSyntaxError(f"the literal {value!r} is not allowed")
        return lambda row: value
    if isinstance(node, ast.Name):
        if node.id == "row":
            return lambda row: row
        if node.id in _CONSTANT_NAMES:
            constant = _CONSTANT_NAMES[node.id]
            return lambda row: constant
        raise ExpressionSyntaxError(f"the name {node.id!r} is not allowed (only row, True, False, None)")
    if isinstance(node, ast.Subscript):
        if isinstance(node.slice, ast.Slice):
            raise ExpressionSyntaxError(_DESCRIBE[ast.Slice])
        target, key = _compile(node.value), _compile(node.slice)
        return lambda row: target(row)[key(row)]
    if isinstance(node, ast.Call):
        return _compile_call(node)
    if isinstance(node, ast.BinOp):
        op = _BINOPS.get(type(node.op))
        if op is None:
            raise ExpressionSyntaxError(f"the operator {type(node.op).__name__} is not allowed")
        left, right = _compile(node.left), _compile(node.right)
        return lambda row: op(left(row), right(row))
    if isinstance(node, ast.UnaryOp):
        operand = _compile(node.operand)
        if isinstance(node.op, ast.Not):
            return lambda row: not operand(row)
        if isinstance(node.op, ast.USub):
            return lambda row: -operand(row)
        if isinstance(node.op, ast.UAdd):
            return lambda row: +operand(row)
        raise ExpressionSyntaxError(f"the operator {type(node.op).__name__} is not allowed")
    if isinstance(node, ast.BoolOp):
        parts = [_compile(v) for v in node.values]
        if isinstance(node.op, ast.And):

            def all_of(row: Mapping[str, Any]) -> Any:
                value: Any = True
                for part in parts:
                    value = part(row)
                    if not value:
                        return value
                return value

            return all_of

        def any_of(row: Mapping[str, Any]) -> Any:
            value: Any = False
            for part in parts:
                value = part(row)
                if value:
                    return value
            return value

        return any_of
    if isinstance(node, ast.Compare):
        return _compile_compare(node)
    if isinstance(node, ast.IfExp):
        test, body, orelse = _compile(node.test), _compile(node.body), _compile(node.orelse)
        return lambda row: body(row) if test(row) else orelse(row)
    if isinstance(node, ast.List | ast.Tuple | ast.Set):
        items = [_compile(e) for e in node.elts]
        make: Callable[[Any], Any] = {ast.List: list, ast.Tuple: tuple, ast.Set: set}[type(node)]
        return lambda row: make(item(row) for item in items)
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise ExpressionSyntaxError("dict unpacking (**) is not allowed")
        keys = [_compile(k) for k in node.keys if k is not None]
        values = [_compile(v) for v in node.values]
        return lambda row: {k(row): v(row) for k, v in zip(keys, values, strict=True)}
    reason = _DESCRIBE.get(type(node), f"{type(node).__name__} is not allowed")
    raise ExpressionSyntaxError(reason)


def _compile_call(node: ast.Call) -> Fn:
    if node.keywords:
        raise ExpressionSyntaxError("keyword arguments are not allowed")
    func = node.func
    args = [_compile(a) for a in node.args]
    if isinstance(func, ast.Attribute):
        if isinstance(func.value, ast.Name) and func.value.id == "row" and func.attr == "get":
            if not 1 <= len(args) <= 2:
                raise ExpressionSyntaxError("row.get takes a key and an optional default")
            key = args[0]
            default = args[1] if len(args) == 2 else (lambda row: None)
            return lambda row: row.get(key(row), default(row))
        raise ExpressionSyntaxError(f"attribute access is not allowed: .{func.attr}() (only row.get(...))")
    if isinstance(func, ast.Name):
        fn = _FUNCTIONS.get(func.id)
        if fn is None:
            raise ExpressionSyntaxError(f"calls to {func.id!r} are not allowed (only {', '.join(_FUNCTIONS)})")
        if len(args) != 1:
            raise ExpressionSyntaxError(f"{func.id}() takes exactly one argument here")
        arg = args[0]
        return lambda row: fn(arg(row))
    raise ExpressionSyntaxError("calls are not allowed except row.get(...) and len str int float bool abs")


def _compile_compare(node: ast.Compare) -> Fn:
    left = _compile(node.left)
    ops: list[Callable[[Any, Any], Any]] = []
    rights: list[Fn] = []
    previous = node.left
    for op, comparator in zip(node.ops, node.comparators, strict=True):
        if isinstance(op, ast.Is | ast.IsNot) and not (_is_none(previous) or _is_none(comparator)):
            raise ExpressionSyntaxError("'is' and 'is not' are only allowed with None")
        previous = comparator
        ops.append(_CMPOPS[type(op)])
        rights.append(_compile(comparator))

    def compare(row: Mapping[str, Any]) -> Any:
        a = left(row)
        for op, right in zip(ops, rights, strict=True):
            b = right(row)
            if not op(a, b):
                return False
            a = b
        return True

    return compare


def _is_none(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value is None
