"""``--fail-if`` conditions: a small, safe expression language over a report's numbers.

Grammar (no ``eval``/``exec``: a tokenizer and a recursive-descent parser build a
tree of plain tuples, which :func:`evaluate` walks)::

    expr       := or_expr
    or_expr    := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | primary
    primary    := "(" expr ")" | comparison
    comparison := operand OP operand          OP: > >= < <= == !=
    operand    := FIELD | NUMBER | "-" NUMBER

A ``FIELD`` is a dotted path into the report (``hessian.top_eig``,
``random_directions.0.mean_increase``: list items by index) or a short alias
(``top_eig``, see :data:`ALIASES`). ``not`` binds tighter than ``and``, which binds
tighter than ``or``, as in Python. Anything else (calls, attribute tricks such as
``__import__('os')``, strings, chained comparisons) is a :class:`ConfigError`.

Example:
    >>> cond = parse_condition("top_eig > 500 or (sharpness >= 0.2 and not acc > 90)")
    >>> report = {"hessian": {"top_eig": 12.0}, "sharpness": {"value": 0.3}, "center": {"accuracy": 85.0}}
    >>> evaluate(cond, report)
    True
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

#: short names for the fields pipelines gate on most (also listed in the report's JSON schema)
ALIASES: dict[str, str] = {
    "loss": "center.loss",
    "acc": "center.accuracy",
    "sharpness": "sharpness.value",
    "top_eig": "hessian.top_eig",
    "trace": "hessian.trace",
    "trace_ratio": "hessian.trace_over_top",
    "curvature": "quadratic_fits.curvature_mean",
    "barrier": "barrier.value",
}

OPERATORS = (">=", "<=", "==", "!=", ">", "<")
#: words and symbols of one condition: about 100 comparisons
MAX_TOKENS = 400
KEYWORDS = ("and", "or", "not")
_HINT = "write comparisons of report fields with numbers, e.g. 'hessian.top_eig > 500 or sharpness >= 0.2'"

# one token per match: a number, a dotted field path, an operator, a parenthesis, or a single bad character
_TOKEN = re.compile(r"""\s*(?:
      (?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)
    | (?P<op>>=|<=|==|!=|>|<)
    | (?P<paren>[()])
    | (?P<minus>-)
    | (?P<bad>\S)
)""", re.VERBOSE)


@dataclass(frozen=True)
class Condition:
    """A parsed ``--fail-if`` expression: its text, tree and the fields it reads."""

    text: str
    tree: tuple[Any, ...]
    fields: tuple[str, ...]

    def __str__(self) -> str:
        return self.text


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:  # only trailing whitespace is left
            break
        pos = m.end()
        kind = m.lastgroup
        if kind is None:
            continue
        value = m.group(kind)
        if kind == "bad":
            raise _syntax(text, f"the character {value!r} at position {m.start(kind) + 1} is not allowed")
        if kind == "name" and value in KEYWORDS:
            kind = value
        out.append((kind, value))
    return out


def _syntax(text: str, why: str) -> ConfigError:
    return ConfigError(f"Cannot read the condition {text!r}", why, _HINT)


class _Parser:
    """Recursive descent over the token list; each method returns a tree node."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.pos = 0
        self.fields: list[str] = []

    def peek(self) -> str | None:
        return self.toks[self.pos][0] if self.pos < len(self.toks) else None

    def take(self) -> tuple[str, str]:
        tok = self.toks[self.pos]
        self.pos += 1
        return tok

    def parse(self) -> tuple[Any, ...]:
        if not self.toks:
            raise _syntax(self.text, "it is empty")
        if len(self.toks) > MAX_TOKENS:  # the tree (and its evaluation) would nest deeper than Python recurses
            raise ConfigError(f"The condition has {len(self.toks)} words and symbols, more than {MAX_TOKENS}",
                              "a --fail-if condition is a short expression over report fields",
                              "split it into several --fail-if options (the gate fails when any of them holds)")
        tree = self.or_expr()
        if self.pos != len(self.toks):
            raise _syntax(self.text, f"unexpected {self.toks[self.pos][1]!r} after a complete condition")
        return tree

    def or_expr(self) -> tuple[Any, ...]:
        node = self.and_expr()
        while self.peek() == "or":
            self.take()
            node = ("or", node, self.and_expr())
        return node

    def and_expr(self) -> tuple[Any, ...]:
        node = self.not_expr()
        while self.peek() == "and":
            self.take()
            node = ("and", node, self.not_expr())
        return node

    def not_expr(self) -> tuple[Any, ...]:
        if self.peek() == "not":
            self.take()
            return ("not", self.not_expr())
        return self.primary()

    def primary(self) -> tuple[Any, ...]:
        if self.peek() == "paren" and self.toks[self.pos][1] == "(":
            self.take()
            node = self.or_expr()
            if self.peek() != "paren" or self.toks[self.pos][1] != ")":
                raise _syntax(self.text, "a '(' is not closed")
            self.take()
            return node
        left = self.operand()
        if self.peek() != "op":
            got = self.toks[self.pos][1] if self.pos < len(self.toks) else "the end"
            raise _syntax(self.text, f"expected a comparison operator ({' '.join(OPERATORS)}) after "
                          f"{left[1]!r}, got {got!r}")
        op = self.take()[1]
        right = self.operand()
        if self.peek() == "op":
            raise _syntax(self.text, "chained comparisons are not supported; join them with 'and'")
        return ("cmp", op, left, right)

    def operand(self) -> tuple[str, Any]:
        kind = self.peek()
        if kind == "minus":
            self.take()
            if self.peek() != "num":
                raise _syntax(self.text, "'-' must be followed by a number")
            return ("num", -float(self.take()[1]))
        if kind == "num":
            return ("num", float(self.take()[1]))
        if kind == "name":
            name = self.take()[1]
            if "__" in name:
                raise _syntax(self.text, f"{name!r} is not a report field")
            if self.peek() == "paren" and self.toks[self.pos][1] == "(":
                raise _syntax(self.text, f"{name!r} is followed by '(': calls are not allowed")
            path = ALIASES.get(name, name)
            self.fields.append(path)
            return ("field", path)
        got = self.toks[self.pos][1] if self.pos < len(self.toks) else "the end"
        raise _syntax(self.text, f"expected a field name or a number, got {got!r}")


def parse_condition(text: str) -> Condition:
    """Parse one ``--fail-if`` expression (syntax only; fields are checked by
    :func:`check_fields` or when evaluated)."""
    parser = _Parser(str(text))
    try:
        tree = parser.parse()
    except RecursionError:
        raise _syntax(str(text), "it is nested too deeply") from None
    if not parser.fields:
        raise _syntax(str(text), "it compares no report field (a condition on numbers alone never changes)")
    return Condition(str(text), tree, tuple(dict.fromkeys(parser.fields)))


def numeric_fields(report: Mapping[str, Any], prefix: str = "") -> dict[str, float | None]:
    """Every numeric leaf of ``report`` by dotted path (lists of objects by index;
    lists of plain numbers, such as curves, are left out). ``None`` values are kept:
    they are fields whose value is not finite or not measured."""
    out: dict[str, float | None] = {}
    items: Iterable[tuple[str, Any]]
    if isinstance(report, Mapping):
        items = ((str(k), v) for k, v in report.items())
    else:
        items = ((str(i), v) for i, v in enumerate(report))
    for key, value in items:
        path = f"{prefix}{key}"
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            out[path] = float(value)
        elif value is None:
            out[path] = None
        elif isinstance(value, Mapping) or (isinstance(value, list) and value and isinstance(value[0], Mapping)):
            out.update(numeric_fields(value, path + "."))
    return out


def _unknown(path: str, available: Iterable[str], why: str) -> ConfigError:
    names = sorted(available)
    aliases = ", ".join(f"{a} = {p}" for a, p in ALIASES.items())
    return ConfigError(f"Unknown report field {path!r} in --fail-if", why,
                       f"use one of the numeric fields: {', '.join(names)}; or an alias: {aliases}")


def check_fields(condition: Condition, available: Iterable[str]) -> None:
    """Raise :class:`ConfigError` if ``condition`` reads a field not in ``available``."""
    names = set(available)
    for path in condition.fields:
        if path not in names:
            raise _unknown(path, names, "this report has no such numeric field")


def missing_values(condition: Condition, report: Mapping[str, Any]) -> list[str]:
    """The fields ``condition`` reads that have no finite value in ``report`` (not
    measured, or not finite there). A gate counts such a condition as TRUE (it fails,
    naming them): an unknown value never passes a release gate, whatever the order of
    the operands. Unknown fields are :class:`ConfigError`."""
    fields = numeric_fields(report)
    check_fields(condition, fields)
    return [f for f in condition.fields if fields[f] is None or not math.isfinite(fields[f])]


def evaluate(condition: Condition, report: Mapping[str, Any]) -> bool:
    """Whether ``condition`` holds for ``report``: true also when a field it reads has
    no finite value (see :func:`missing_values`); unknown fields are :class:`ConfigError`."""
    if missing_values(condition, report):
        return True
    fields = numeric_fields(report)

    def value(node: tuple[str, Any]) -> float:
        if node[0] == "num":
            return float(node[1])
        v = fields[node[1]]
        if v is None or not math.isfinite(v):
            raise ConfigError(f"The report field {node[1]!r} has no finite value",
                              "it was not measured or the loss was not finite there",
                              "drop the condition or fix the run")
        return v

    def walk(node: tuple[Any, ...]) -> bool:
        kind = node[0]
        if kind == "or":
            return walk(node[1]) or walk(node[2])
        if kind == "and":
            return walk(node[1]) and walk(node[2])
        if kind == "not":
            return not walk(node[1])
        op, a, b = node[1], value(node[2]), value(node[3])
        return {">": a > b, ">=": a >= b, "<": a < b, "<=": a <= b, "==": a == b, "!=": a != b}[op]

    return walk(condition.tree)
