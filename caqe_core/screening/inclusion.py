"""Inclusion criteria over survey answers, parsed and evaluated without ``eval``.

A criterion is a Python-like boolean expression such as ``age >= 18`` or
``hearing_disorder == "no" and age < 70``. ``ast.parse(mode="eval")`` builds
the syntax tree, and a walker accepts only these nodes: comparisons
(``== != < <= > >= in not in``, chained too), ``and``, ``or``, ``not``,
names of survey questions, and constants (strings, numbers, booleans), plus
tuples or lists of constants on the right of ``in``. Calls, attribute
access, subscripts, lambdas, comprehensions and every other node are
rejected before anything is evaluated, so a criterion can never run code.

An unanswered optional question has the value None: every comparison that
involves it is false, so ``not (x == 1)`` is true for a missing ``x``.
"""

from __future__ import annotations

import ast
import difflib
import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

MAX_LENGTH = 500
"""Longest accepted criterion, in characters; a criterion is one condition."""

_COMPARISONS: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda left, right: left in right,
    ast.NotIn: lambda left, right: left not in right,
}

_SYMBOLS = {
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.In: "in",
    ast.NotIn: "not in",
}


class CriterionError(ValueError):
    """An invalid inclusion criterion. The message names the problem and the fix."""


@dataclass(frozen=True)
class QuestionInfo:
    """The type and options of one survey question, for the type check."""

    type: str
    """The question type: single, multiple, number, text or likert."""
    options: tuple[str, ...] = ()


def _describe_node(node: ast.AST) -> str:
    names = {
        ast.Call: "a function call",
        ast.Attribute: "attribute access",
        ast.Subscript: "a subscript",
        ast.Lambda: "a lambda",
        ast.ListComp: "a comprehension",
        ast.SetComp: "a comprehension",
        ast.DictComp: "a comprehension",
        ast.GeneratorExp: "a generator expression",
        ast.BinOp: "arithmetic",
        ast.IfExp: "a conditional expression",
        ast.NamedExpr: "an assignment expression",
        ast.Starred: "unpacking",
        ast.JoinedStr: "an f-string",
        ast.Await: "await",
        ast.Dict: "a dict",
        ast.Set: "a set",
    }
    return names.get(type(node), f"{type(node).__name__} syntax")


def _check_constant(node: ast.Constant, source: str) -> None:
    if node.value is None or isinstance(node.value, (str, int, float, bool)):
        return
    raise CriterionError(
        f"{source!r} contains the constant {node.value!r}; only strings, numbers, "
        "booleans and None are allowed"
    )


def _check_operand(node: ast.expr, source: str, container_allowed: bool) -> None:
    if isinstance(node, ast.Name):
        if node.id.startswith("__"):
            raise CriterionError(
                f"{source!r} uses the name {node.id!r}; use survey question ids"
            )
        return
    if isinstance(node, ast.Constant):
        _check_constant(node, source)
        return
    if container_allowed and isinstance(node, (ast.Tuple, ast.List)):
        for element in node.elts:
            if not isinstance(element, ast.Constant):
                raise CriterionError(
                    f"{source!r} has {_describe_node(element)} inside a list; the list "
                    "after 'in' may contain only constants such as \"no\" or 18"
                )
            _check_constant(element, source)
        return
    if isinstance(node, (ast.Compare, ast.BoolOp, ast.UnaryOp)):
        raise CriterionError(
            f"{source!r} compares the result of a comparison; join conditions with "
            "'and' or 'or' instead"
        )
    raise CriterionError(
        f"{source!r} contains {_describe_node(node)}, which criteria do not allow; "
        "write comparisons of question ids with constants, joined by and, or, not"
    )


def _check_tree(node: ast.expr, source: str) -> None:
    if isinstance(node, ast.BoolOp):
        for value in node.values:
            _check_tree(value, source)
        return
    if isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, ast.Not):
            if isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
                raise CriterionError(
                    f"{source!r} has a negative number outside a comparison; compare a "
                    "question id with it, such as 'offset >= -5'"
                )
            raise CriterionError(
                f"{source!r} uses the operator {type(node.op).__name__}; use 'not'"
            )
        _check_tree(node.operand, source)
        return
    if isinstance(node, ast.Compare):
        operands = [node.left, *node.comparators]
        for index, (op, right) in enumerate(zip(node.ops, node.comparators)):
            if type(op) not in _COMPARISONS:
                raise CriterionError(
                    f"{source!r} uses {type(op).__name__}; use one of "
                    "==, !=, <, <=, >, >=, in, not in"
                )
            membership = isinstance(op, (ast.In, ast.NotIn))
            _check_operand(operands[index], source, container_allowed=False)
            _check_operand(right, source, container_allowed=membership)
        return
    if isinstance(node, ast.Name):
        raise CriterionError(
            f"{source!r} is a bare name; compare it with a value, such as "
            f"'{node.id} == \"yes\"'"
        )
    raise CriterionError(
        f"{source!r} contains {_describe_node(node)}, which criteria do not allow; "
        "write comparisons of question ids with constants, joined by and, or, not"
    )


def _fold_negative_numbers(tree: ast.AST) -> ast.AST:
    """Turn ``-5`` (a unary minus on a number) into the constant -5."""

    class Folder(ast.NodeTransformer):
        def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
            self.generic_visit(node)
            operand = node.operand
            if (
                isinstance(node.op, ast.USub)
                and isinstance(operand, ast.Constant)
                and isinstance(operand.value, (int, float))
                and not isinstance(operand.value, bool)
            ):
                return ast.copy_location(ast.Constant(-operand.value), node)
            return node

    return Folder().visit(tree)


@lru_cache(maxsize=256)
def parse_criterion(source: str) -> ast.Expression:
    """Parse one criterion and check that it contains only allowed nodes.

    Raise ``CriterionError`` naming the first disallowed construct.
    """
    if not isinstance(source, str) or not source.strip():
        raise CriterionError(
            "a criterion must be a non-empty string such as 'age >= 18'"
        )
    if len(source) > MAX_LENGTH:
        raise CriterionError(
            f"the criterion is {len(source)} characters long; at most {MAX_LENGTH} are "
            "allowed. Split it into several criteria"
        )
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as error:
        raise CriterionError(
            f"{source!r} is not a valid expression ({error.msg})"
        ) from None
    folded = _fold_negative_numbers(tree)
    assert isinstance(folded, ast.Expression)
    tree = folded
    _check_tree(tree.body, source)
    return tree


def criterion_names(source: str) -> list[str]:
    """Return the question ids a criterion refers to, in order of appearance."""
    tree = parse_criterion(source)
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id not in names:
            names.append(node.id)
    return names


def _constants(node: ast.expr) -> list[Any]:
    if isinstance(node, ast.Constant):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List)):
        return [
            element.value for element in node.elts if isinstance(element, ast.Constant)
        ]
    return []


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_pair(
    source: str,
    name: str,
    info: QuestionInfo,
    op: ast.cmpop,
    other: ast.expr,
    name_left: bool,
) -> None:
    """Check that a question is compared with values of its answer type."""
    values = _constants(other)
    symbol = _SYMBOLS[type(op)]
    if info.type == "multiple":
        if name_left or not isinstance(op, (ast.In, ast.NotIn)):
            raise CriterionError(
                f"{source!r} compares the multiple-choice question {name!r} with "
                f"'{symbol}'; test one option with '\"option\" in {name}'"
            )
    elif isinstance(op, (ast.In, ast.NotIn)) and not name_left:
        raise CriterionError(
            f"{source!r} tests membership in {name!r}, which is no multiple-choice "
            f'question; write \'{name} in ("a", "b")\' instead'
        )
    for value in values:
        if value is None:
            continue
        if info.type == "number":
            if not _is_number(value):
                raise CriterionError(
                    f"{source!r} compares the number question {name!r} with {value!r}; "
                    "compare it with a number"
                )
        elif not isinstance(value, str):
            raise CriterionError(
                f"{source!r} compares the {info.type} question {name!r} with {value!r}; "
                "compare it with one of its options, in quotes"
            )
        elif info.options and value not in info.options:
            same_case = [
                option for option in info.options if option.lower() == value.lower()
            ]
            close = same_case or difflib.get_close_matches(value, info.options, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise CriterionError(
                f"{source!r} compares {name!r} with {value!r}, which is not one of its "
                f"options{hint}; options: {', '.join(map(repr, info.options))}"
            )
        elif not isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)):
            raise CriterionError(
                f"{source!r} orders the answers of the {info.type} question {name!r} "
                f"with '{symbol}'; use ==, != or in"
            )


def check_criterion(source: str, questions: Mapping[str, QuestionInfo]) -> None:
    """Check a criterion's syntax, question ids and value types.

    ``questions`` maps each question id that the criterion may use to its
    type. Raise ``CriterionError`` with the problem and the fix.
    """
    tree = parse_criterion(source)
    for name in criterion_names(source):
        if name not in questions:
            close = difflib.get_close_matches(name, list(questions), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            known = ", ".join(questions) or "none"
            raise CriterionError(
                f"{source!r} uses {name!r}, which is no pre-survey question id{hint}; "
                f"question ids: {known}"
            )
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for index, op in enumerate(node.ops):
                left, right = operands[index], operands[index + 1]
                if isinstance(left, ast.Name):
                    _check_pair(source, left.id, questions[left.id], op, right, True)
                if isinstance(right, ast.Name):
                    _check_pair(source, right.id, questions[right.id], op, left, False)


def _value(node: ast.expr, answers: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Name):
        return answers.get(node.id)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List)):
        return tuple(_value(element, answers) for element in node.elts)
    raise CriterionError(f"unexpected {_describe_node(node)} in a checked criterion")


def _compare(op: ast.cmpop, left: Any, right: Any) -> bool:
    if left is None or right is None:
        return False
    if isinstance(op, (ast.In, ast.NotIn)):
        if not isinstance(right, (tuple, list)):
            return False
    elif _is_number(left) != _is_number(right):
        # A number never equals or orders against a string answer.
        return isinstance(op, ast.NotEq)
    try:
        return bool(_COMPARISONS[type(op)](left, right))
    except TypeError:
        return False


def _evaluate(node: ast.expr, answers: Mapping[str, Any]) -> bool:
    if isinstance(node, ast.BoolOp):
        results = (_evaluate(value, answers) for value in node.values)
        return all(results) if isinstance(node.op, ast.And) else any(results)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return not _evaluate(node.operand, answers)
    if isinstance(node, ast.Compare):
        left = _value(node.left, answers)
        for op, comparator in zip(node.ops, node.comparators):
            right = _value(comparator, answers)
            if not _compare(op, left, right):
                return False
            left = right
        return True
    raise CriterionError(f"unexpected {_describe_node(node)} in a checked criterion")


def evaluate_criterion(source: str, answers: Mapping[str, Any]) -> bool:
    """Return whether the survey ``answers`` (question id to answer) meet a criterion."""
    return _evaluate(parse_criterion(source).body, answers)


def failed_criteria(criteria: Iterable[str], answers: Mapping[str, Any]) -> list[str]:
    """Return the criteria that ``answers`` do not meet, in the given order."""
    return [source for source in criteria if not evaluate_criterion(source, answers)]
