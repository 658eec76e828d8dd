"""A small Dockerfile reader, enough for the image's static checks.

It keeps what the checks need: instructions with their arguments (continuation lines joined,
comment lines dropped, as the Docker builder does), grouped into stages by ``FROM``, and the
``--flag=value`` options some instructions take. Heredocs are not supported; a Dockerfile using
one is refused rather than misread.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field

_DIRECTIVE = re.compile(r"#\s*[a-zA-Z]+\s*=")
_HEREDOC = re.compile(r"<<-?\s*['\"]?[A-Za-z_]+")


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str  # the rest of the instruction, continuation lines joined by a space
    line: int  # where it starts, 1-based

    def options(self) -> tuple[dict[str, str], str]:
        """Leading ``--name=value`` options (``--from``, ``--chmod``, ...) and the rest."""
        options: dict[str, str] = {}
        rest = self.args
        while match := re.match(r"--([a-z-]+)(?:=(\S*))?\s*", rest):
            options[match[1]] = match[2] or ""
            rest = rest[match.end() :]
        return options, rest

    def words(self) -> list[str]:
        """The arguments without options: the JSON array of the exec form, or shell words."""
        return exec_form(self.options()[1]) or shlex.split(self.options()[1])


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        """The stage's ENV settings, in the ``KEY=VALUE`` form (the only one this repo uses)."""
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for word in shlex.split(instruction.args):
                key, equals, value = word.partition("=")
                if not equals:
                    raise ValueError(f"line {instruction.line}: use ENV KEY=VALUE")
                values[key] = value
        return values


def exec_form(text: str) -> list[str] | None:
    """The JSON array of an exec-form instruction, or None for the shell form."""
    text = text.strip()
    if not text.startswith("["):
        return None
    value = json.loads(text)
    if not isinstance(value, list) or not all(isinstance(word, str) for word in value):
        raise ValueError(f"not a JSON array of strings: {text}")
    return value


def _logical_lines(text: str) -> list[tuple[int, str]]:
    lines: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    in_header = True
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if in_header and _DIRECTIVE.match(stripped):
            continue  # a parser directive, such as "# syntax=docker/dockerfile:1"
        in_header = False
        if not stripped or stripped.startswith("#"):
            continue  # blank lines and comments vanish, inside continuations too
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        lines.append((start, " ".join(part for part in pending if part)))
        pending = []
    if pending:
        raise ValueError(f"line {start}: the last instruction ends with a continuation")
    return lines


def global_args(text: str) -> dict[str, str | None]:
    """The ``ARG NAME[=DEFAULT]`` lines before the first ``FROM``, which a ``FROM`` may use."""
    values: dict[str, str | None] = {}
    for _, line in _logical_lines(text):
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            break
        if keyword.upper() == "ARG":
            name, equals, default = args.strip().partition("=")
            values[name] = default if equals else None
    return values


def directives(text: str) -> list[str]:
    """The parser directives at the top (``# syntax=...``, ``# escape=...``)."""
    found = []
    for line in text.splitlines():
        if not _DIRECTIVE.match(line.strip()):
            break
        found.append(line.strip())
    return found


def parse(text: str) -> list[Stage]:
    """The stages of a Dockerfile, in order."""
    stages: list[Stage] = []
    for number, line in _logical_lines(text):
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if _HEREDOC.search(args) and keyword in ("RUN", "COPY", "ADD"):
            raise ValueError(f"line {number}: heredocs are not supported by this reader")
        instruction = Instruction(keyword, args.strip(), number)
        if keyword == "FROM":
            _, rest = instruction.options()  # --platform=...
            words = rest.split()
            if len(words) == 3 and words[1].upper() == "AS":
                stages.append(Stage(words[0], words[2]))
            elif len(words) == 1:
                stages.append(Stage(words[0], None))
            else:
                raise ValueError(f"line {number}: expected FROM IMAGE [AS NAME]")
        elif not stages:
            if keyword != "ARG":
                raise ValueError(f"line {number}: {keyword} before the first FROM")
        else:
            stages[-1].instructions.append(instruction)
    return stages
