"""The gate expression language: a small, safe subset of Python expressions.

The text is parsed with `ast`, every node is checked against an allow-list, and the tree is
compiled into nested closures. Nothing is ever passed to eval/exec/compile. Evaluation errors
(a missing field, division by zero, a type error, a value over the bounds below) become
`ExpressionError`: a row error.

The language has no loops, so what one evaluation can cost is bounded by bounding its values:
every value it builds holds at most `MAX_ITEMS` items (nested ones counted), every integer at
most `MAX_DIGITS` digits, and all the values one evaluation builds or compares together at most
`MAX_WORK` items. A row over a bound is refused before the value is built wherever the size can
be known in advance (repetition, `+`, `str()`). `str()` counts what it would spell out, an
integer as many items as its digits; nothing else turns values into text (`%` on strings,
methods such as `join` or `format`, and f-strings are refused).
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Collection, Mapping
from itertools import compress, repeat
from typing import Any

from engine.errors import EngineError
from engine.plugins.reasons import described, recorded

MAX_SOURCE = 10_000  # characters of expression text
MAX_DEPTH = 200  # levels of nesting in the expression
MAX_ITEMS = 1_000_000  # items in one value
MAX_DIGITS = 4_300  # digits of one integer: Python's own limit for printing one
MAX_WORK = 10_000_000  # items built or compared by one evaluation
_INT_LIMIT = 10**MAX_DIGITS
# Any int of fewer bits is below 10**MAX_DIGITS, so the exact comparison is rarely needed.
_SAFE_BITS = _INT_LIMIT.bit_length() - 1


class ExpressionSyntaxError(EngineError):
    """The expression uses something the language does not allow (raised at settings load)."""


class ExpressionError(EngineError):
    """Evaluating the expression on a row failed: a row error, never a crash."""


class _Eval:
    """One evaluation: the row and the work done on it so far."""

    __slots__ = ("row", "work")

    def __init__(self, row: Mapping[str, Any]) -> None:
        self.row = row
        self.work = 0


Fn = Callable[[_Eval], Any]

_CONTAINERS = (list, tuple, set, frozenset, dict)
_SIZED = (str, *_CONTAINERS)
_SCALARS = {int, float, bool, type(None)}


def _weight(value: Any, limit: int, *, digits: bool = False) -> int:
    """How many items `value` holds counting nested ones, counting no further than past `limit`.
    With `digits`, what `str()` of it would spell out: an integer weighs its digits (built or
    compared, a big integer costs about what a small one does; spelled out, up to 4,300 times
    more). Iterative: a row may hold deeply nested data."""
    if isinstance(value, int):
        return 1 + (_extra_digits(value.bit_length()) if digits else 0)
    if not isinstance(value, _SIZED):
        return 1
    total = 0
    stack = [value]
    while stack and total <= limit:
        item = stack.pop()
        total += len(item)  # one for each element; an int's further digits are added below
        if isinstance(item, str):
            continue
        inner = [*item.keys(), *item.values()] if isinstance(item, dict) else item
        types = set(map(type, inner))
        # Most collections hold only scalars: seeing that at C speed keeps this cheap.
        if types <= _SCALARS:
            if digits and int in types:
                total += _extra_digits_of_ints(inner, types)
            continue
        for x in inner:
            if isinstance(x, _SIZED):
                stack.append(x)
            elif digits and isinstance(x, int):
                total += _extra_digits(x.bit_length())
    return total


def _extra_digits(bits: int) -> int:
    """Digits beyond the first of an integer of `bits` bits, at most: its size is known from
    `bit_length()` without printing it (30103/100000 is log10(2) rounded up)."""
    return bits * 30103 // 100000


def _extra_digits_of_ints(scalars: Collection[Any], types: set[type]) -> int:
    """`_extra_digits` summed over the ints among `scalars` (whose `types` are known), mostly at
    C speed: a list of a million small ints is common, and one of a thousand 4,000-digit ints
    must weigh 4,000,000."""
    ints = scalars if types <= {int, bool} else compress(scalars, map(operator.is_, map(type, scalars), repeat(int)))
    return sum(map(_extra_digits, map(int.bit_length, ints)))


def _too_big_int(value: Any) -> bool:
    return (
        isinstance(value, int)
        and value.bit_length() > _SAFE_BITS
        and not isinstance(value, bool)
        and abs(value) >= _INT_LIMIT
    )


def _charge(ctx: _Eval, value: Any) -> Any:
    """Count a value the evaluation built against the bounds; return it."""
    if _too_big_int(value):
        raise ExpressionError(f"an integer of more than {MAX_DIGITS:,} digits")
    if isinstance(value, _SIZED):
        size = _weight(value, MAX_ITEMS)
        if size > MAX_ITEMS:
            raise ExpressionError(f"a value too large (over {MAX_ITEMS:,} items)")
        _spend(ctx, size)
    return value


def _spend(ctx: _Eval, items: int) -> None:
    ctx.work += items
    if ctx.work > MAX_WORK:
        raise ExpressionError(f"more than {MAX_WORK:,} items built or compared for one row")


def _multiply(a: Any, b: Any) -> Any:
    # Repetition is checked before it runs: `'x' * row['n']` must not be able to exhaust memory,
    # and nested items count, so `[[0] * 1000000] * 1000000` (cheap itself, but not to print)
    # is refused too.
    for seq, n in ((a, b), (b, a)):
        repeats = isinstance(seq, str | list | tuple) and isinstance(n, int) and not isinstance(n, bool) and n > 0
        if repeats and _weight(seq, MAX_ITEMS) * n > MAX_ITEMS:
            raise ExpressionError(f"repetition result too large (over {MAX_ITEMS:,} items)")
    return a * b


def _add(a: Any, b: Any) -> Any:
    # Concatenation is checked before it runs, like repetition.
    sequences = isinstance(a, str | list | tuple) and isinstance(b, str | list | tuple)
    if sequences and _weight(a, MAX_ITEMS) + _weight(b, MAX_ITEMS) > MAX_ITEMS:
        raise ExpressionError(f"concatenation result too large (over {MAX_ITEMS:,} items)")
    return a + b


def _modulo(a: Any, b: Any) -> Any:
    # `%` is arithmetic here; printf-style formatting (`'%999999999d' % 1`) could build huge strings.
    if isinstance(a, str | bytes):
        raise ExpressionError("'%' is for numbers; string formatting is not supported")
    return a % b


def _to_str(value: Any) -> str:
    # What str() spells out is about as long as the value's weight: refuse a huge one first.
    if isinstance(value, _CONTAINERS) and _weight(value, MAX_ITEMS, digits=True) > MAX_ITEMS:
        raise ExpressionError(f"str() of a value too large (over {MAX_ITEMS:,} items)")
    return str(value)


_BINOPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: _add,
    ast.Sub: operator.sub,
    ast.Mult: _multiply,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: _modulo,
}
# The operators refused, as the expression spells them: the message names what the user wrote,
# not Python's name for it (`Pow`, `LShift`).
_REFUSED_OPS: dict[type[ast.operator | ast.unaryop], str] = {
    ast.Pow: "**",
    ast.MatMult: "@",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.BitOr: "|",
    ast.BitXor: "^",
    ast.BitAnd: "&",
    ast.Invert: "~",
}


def _refused_op(op: ast.operator | ast.unaryop) -> ExpressionSyntaxError:
    return ExpressionSyntaxError(f"the operator {_REFUSED_OPS.get(type(op), type(op).__name__)} is not allowed")


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
    "str": _to_str,
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
    computed, so which fields it reads cannot be known before it runs. `literals` are the
    strings it spells out: settings text, which a reason may quote (a value computed from the
    row is row data, which it may not: see engine/plugins/reasons.py)."""

    __slots__ = ("_fn", "fields", "literals", "source")

    def __init__(self, source: str, fn: Fn, fields: frozenset[str] | None, literals: frozenset[str]) -> None:
        self.source = source
        self._fn = fn
        self.fields = fields
        self.literals = literals

    def evaluate(self, row: Mapping[str, Any]) -> Any:
        try:
            value = self._fn(_Eval(row))
        except ExpressionError:
            raise
        except KeyError as e:
            key = e.args[0] if e.args else None
            if isinstance(key, str) and key in self.literals:
                raise ExpressionError(f"field '{key}' not found") from None
            raise ExpressionError(f"a key computed from the row is not found ({described(key)})") from None
        except ZeroDivisionError:
            raise ExpressionError("division by zero") from None
        except MemoryError:
            raise ExpressionError("out of memory") from None
        except Exception as e:  # TypeError, ValueError, OverflowError, RecursionError, ...
            # A ValueError quotes the text it could not convert: only the class is recorded.
            raise ExpressionError(recorded(e, raised_by_python=True)) from None
        if _too_big_int(value):  # e.g. read from the row as it is: no caller could print it
            raise ExpressionError(f"the result is an integer of more than {MAX_DIGITS:,} digits")
        return value

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"


def compile_expression(source: str) -> Expression:
    """Check `source` against the language and compile it; raise ExpressionSyntaxError naming what is refused."""
    text = source.strip()
    if len(text) > MAX_SOURCE:
        raise ExpressionSyntaxError(f"the expression is {len(text):,} characters long; allowed: at most {MAX_SOURCE:,}")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        # (Python gives no column, or 0, for an expression that stops short: `row['a'] >`.)
        where = f"column {e.offset}" if e.offset else "where it ends"
        raise ExpressionSyntaxError(f"not a valid expression: {e.msg} ({where})") from None
    except ValueError as e:  # NUL bytes
        raise ExpressionSyntaxError(f"not a valid expression: {e}") from None
    except (RecursionError, MemoryError):  # the parser's own limits, hit before ours
        raise ExpressionSyntaxError(
            f"not a valid expression: nested too deeply for the parser; allowed: at most {MAX_DEPTH} levels"
        ) from None
    depth = _depth(tree)
    if depth > MAX_DEPTH:
        raise ExpressionSyntaxError(f"the expression is nested {depth} levels deep; allowed: at most {MAX_DEPTH}")
    return _check_and_compile(source, tree)


def _depth(tree: ast.AST) -> int:
    """How deeply the tree nests, walked without recursion (the tree may be absurdly deep)."""
    deepest = 0
    stack = [(tree, 1)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        stack.extend((child, d + 1) for child in ast.iter_child_nodes(node))
    return deepest


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
    literals = frozenset(n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str))
    return Expression(source, _compile(tree.body), _fields(tree), literals)


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
        return lambda c: value
    if isinstance(node, ast.Name):
        if node.id == "row":
            return lambda c: c.row
        if node.id in _CONSTANT_NAMES:
            constant = _CONSTANT_NAMES[node.id]
            return lambda c: constant
        raise ExpressionSyntaxError(f"the name {node.id!r} is not allowed (only row, True, False, None)")
    if isinstance(node, ast.Subscript):
        if isinstance(node.slice, ast.Slice):
            raise ExpressionSyntaxError(_DESCRIBE[ast.Slice])
        target, key = _compile(node.value), _compile(node.slice)
        return lambda c: target(c)[key(c)]
    if isinstance(node, ast.Call):
        return _compile_call(node)
    if isinstance(node, ast.BinOp):
        op = _BINOPS.get(type(node.op))
        if op is None:
            raise _refused_op(node.op)
        left, right = _compile(node.left), _compile(node.right)
        return lambda c: _charge(c, op(left(c), right(c)))
    if isinstance(node, ast.UnaryOp):
        operand = _compile(node.operand)
        if isinstance(node.op, ast.Not):
            return lambda c: not operand(c)
        if isinstance(node.op, ast.USub):
            return lambda c: _charge(c, -operand(c))
        if isinstance(node.op, ast.UAdd):
            return lambda c: _charge(c, +operand(c))
        raise _refused_op(node.op)
    if isinstance(node, ast.BoolOp):
        parts = [_compile(v) for v in node.values]
        if isinstance(node.op, ast.And):

            def all_of(c: _Eval) -> Any:
                value: Any = True
                for part in parts:
                    value = part(c)
                    if not value:
                        return value
                return value

            return all_of

        def any_of(c: _Eval) -> Any:
            value: Any = False
            for part in parts:
                value = part(c)
                if value:
                    return value
            return value

        return any_of
    if isinstance(node, ast.Compare):
        return _compile_compare(node)
    if isinstance(node, ast.IfExp):
        test, body, orelse = _compile(node.test), _compile(node.body), _compile(node.orelse)
        return lambda c: body(c) if test(c) else orelse(c)
    if isinstance(node, ast.List | ast.Tuple | ast.Set):
        items = [_compile(e) for e in node.elts]
        make: Callable[[Any], Any] = {ast.List: list, ast.Tuple: tuple, ast.Set: set}[type(node)]
        return lambda c: _charge(c, make(item(c) for item in items))
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise ExpressionSyntaxError("dict unpacking (**) is not allowed")
        keys = [_compile(k) for k in node.keys if k is not None]
        values = [_compile(v) for v in node.values]
        return lambda c: _charge(c, {k(c): v(c) for k, v in zip(keys, values, strict=True)})
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
            default = args[1] if len(args) == 2 else (lambda c: None)
            return lambda c: c.row.get(key(c), default(c))
        raise ExpressionSyntaxError(f"attribute access is not allowed: .{func.attr}() (only row.get(...))")
    if isinstance(func, ast.Name):
        fn = _FUNCTIONS.get(func.id)
        if fn is None:
            raise ExpressionSyntaxError(f"calls to {func.id!r} are not allowed (only {', '.join(_FUNCTIONS)})")
        if len(args) != 1:
            raise ExpressionSyntaxError(f"{func.id}() takes exactly one argument here")
        arg = args[0]
        return lambda c: _charge(c, fn(arg(c)))
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

    def compare(c: _Eval) -> Any:
        a = left(c)
        for op, right in zip(ops, rights, strict=True):
            b = right(c)
            if isinstance(a, _CONTAINERS) or isinstance(b, _CONTAINERS):
                # Comparing collections walks them item by item (`x in big_list`, `a == b`).
                _spend(c, _weight(a, MAX_WORK) + _weight(b, MAX_WORK))
            if not op(a, b):
                return False
            a = b
        return True

    return compare


def _is_none(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value is None
