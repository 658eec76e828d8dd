"""The warnings and errors the code can log, read from its source with ``ast``.

A call counts when it logs at warning level or above on something that is a logger by name
(``log``, ``logger``, ``stranger_log``, ``self.log``, ``logging.getLogger(...)``) or on the
project's throttles (``throttled.warning(key, message, ...)``), and ``.log(level, ...)`` unless
its level is plainly below warning. Its message is the format string as written (a constant, or
an f-string whose ``{...}`` parts are placeholders); a message passed in a variable is
*dynamic*, and named by the file it is in.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

LEVELS = {"warning", "error", "critical", "exception"}
BELOW_WARNING = ("logging.DEBUG", "logging.INFO")
PERCENT = re.compile(r"%(?:\([^)]*\))?[-#0 +]*\d*(?:\.\d+)?[sdrfgixXe]")
HOLE = "\x00"  # stands for a placeholder inside a message


@dataclass(frozen=True)
class LogCall:
    path: str
    line: int
    message: str | None  # None: dynamic; else literal text with HOLE for each placeholder

    @property
    def literal(self) -> str:
        return (self.message or "").replace(HOLE, "")

    def regex(self) -> re.Pattern[str]:
        """What the message may look like once its placeholders are filled."""
        assert self.message is not None
        # ".*?": a placeholder may be filled with nothing (an optional "(name)", say).
        return re.compile(".*?".join(re.escape(part) for part in self.message.split(HOLE)), re.S)


def _is_logger(node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        return node.id.lower().endswith(("log", "logger"))
    if isinstance(node, ast.Attribute):
        return node.attr.lower().endswith(("log", "logger"))
    if isinstance(node, ast.Call):
        func = node.func
        return (isinstance(func, ast.Attribute) and func.attr == "getLogger") or (
            isinstance(func, ast.Name) and func.id == "getLogger"
        )
    return False


def message_of(node: ast.expr) -> str | None:
    """The message a format argument writes, placeholders as HOLE; None when not literal."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return PERCENT.sub(HOLE, node.value).replace("%%", "%")
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                parts.append(value.value)
            else:
                parts.append(HOLE)
        return "".join(parts)
    return None


def _format_argument(call: ast.Call) -> ast.expr | None:
    func = call.func
    if not isinstance(func, ast.Attribute):
        return None
    receiver, method, args = func.value, func.attr, call.args
    if isinstance(receiver, ast.Name) and receiver.id == "throttled" and method == "warning":
        return args[1] if len(args) > 1 else None
    if not _is_logger(receiver):
        return None
    if method == "log":
        if not args or ast.unparse(args[0]) in BELOW_WARNING:
            return None
        return args[1] if len(args) > 1 else None
    return args[0] if method in LEVELS and args else None


def log_calls(
    root: Path, folders: tuple[str, ...] = ("server", "client", "tunnel")
) -> Iterator[LogCall]:
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call):
                    argument = _format_argument(node)
                    if argument is not None:
                        relative = str(path.relative_to(root))
                        yield LogCall(relative, node.lineno, message_of(argument))


def strings_of(tree: ast.AST) -> Iterator[ast.Constant | ast.JoinedStr]:
    """The string literals under ``tree`` as written: an f-string whole (not its parts), and
    no docstring."""
    parts = {
        id(value) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr)
        for value in node.values
    }  # fmt: skip
    docstrings = {
        id(node.value) for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }  # fmt: skip
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant | ast.JoinedStr) and id(node) not in parts | docstrings:
            yield node


def messages_in_function(path: Path, name: str, shortest: int = 25) -> list[LogCall]:
    """The string messages (constants and f-strings of at least ``shortest`` literal
    characters) the function ``name`` of ``path`` holds: where a dynamic log line's text is
    made."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            for inner in strings_of(node):
                message = message_of(inner)
                call = LogCall(str(path), getattr(inner, "lineno", 0), message)
                if message is not None and len(call.literal) >= shortest:
                    found.append(call)
            return found
    raise AssertionError(f"no function {name} in {path}")
