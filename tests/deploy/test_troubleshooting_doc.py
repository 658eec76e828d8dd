"""docs/troubleshooting.md and the code agree: every line it quotes is one the code can write,
and every warning or error the code can log is quoted there.

The code's lines are read from its source (``tests.deploy.logcalls``): each warning- or
error-level call on a logger, its format string turned into a pattern whose placeholders match
anything. The page quotes a line as ``> `...` ``, with ``<...>`` for the parts that change.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.deploy.logcalls import (
    HOLE,
    LogCall,
    log_calls,
    message_of,
    messages_in_function,
    strings_of,
)
from tests.deploy.support import REPO

PAGE = REPO / "docs" / "troubleshooting.md"
QUOTE = re.compile(r"^> `(.+)`$", re.M)
# Calls whose message is made elsewhere and passed in a variable: the functions that make it,
# whose messages the page must quote instead. A new such call fails the test until it is named.
DYNAMIC = {
    "server/app.py": [("tunnel/security/auth.py", "plaintext_warning")],
    "client/app.py": [("tunnel/security/auth.py", "plaintext_warning")],
    "server/cli.py": [("tunnel/security/access.py", "unmatched")],
    "client/cli.py": [("tunnel/security/auth.py", "load_tokens")],
    "client/listeners.py": [
        ("tunnel/operations/oserrors.py", "listen_error"),
        ("tunnel/aio/unixlisten.py", "apply"),
        ("tunnel/aio/unixlisten.py", "_not_ours"),
    ],
    "client/udp_expose.py": [
        ("client/listeners.py", "other_transport"),
        ("tunnel/operations/oserrors.py", "listen_error"),
    ],
    # The log budget and the throttle themselves: their callers are read as calls.
    "tunnel/operations/loglimit.py": [],
    "tunnel/operations/logonce.py": [],
}
SHORTEST = 4  # literal characters a message needs to say anything: "%s" alone says nothing


def quotes() -> list[str]:
    found = QUOTE.findall(PAGE.read_text())
    assert len(found) > 30, "the page quotes too few lines"
    return found


def logged() -> list[LogCall]:
    return list(log_calls(REPO))


def dynamic_sources(calls: list[LogCall]) -> list[LogCall]:
    found = []
    for call in calls:
        if call.message is None or len(call.literal) < SHORTEST:
            assert call.path in DYNAMIC, (
                f"{call.path}:{call.line} logs a message made elsewhere; name the function "
                "that makes it in DYNAMIC (tests/deploy/test_troubleshooting_doc.py)"
            )
            for path, function in DYNAMIC[call.path]:
                found += messages_in_function(REPO / path, function)
    return found


def code_strings() -> list[LogCall]:
    """Every string of the code long enough to be a message: what else the page may quote
    (errors printed at start, texts a log line's placeholder carries)."""
    found = []
    for folder in ("server", "client", "tunnel"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in strings_of(ast.parse(path.read_text())):
                message = message_of(node)
                if message is not None and len(message.replace(HOLE, "")) >= 12:
                    found.append(LogCall(str(path), getattr(node, "lineno", 0), message))
    return found


def test_every_warning_and_error_the_code_logs_is_quoted() -> None:
    calls = logged()
    assert len(calls) > 30, "the source parser found too few log calls"
    page = quotes()
    wanted = [c for c in calls if c.message is not None and len(c.literal) >= SHORTEST]
    wanted += dynamic_sources(calls)
    unquoted = [
        f"{call.path}:{call.line}: {call.message!r}".replace(HOLE, "<...>")
        for call in wanted
        if not any(call.regex().fullmatch(quote) for quote in page)
    ]
    assert not unquoted, "lines the code logs that docs/troubleshooting.md does not quote:\n" + (
        "\n".join(unquoted)
    )


def test_every_quoted_line_is_one_the_code_can_write() -> None:
    calls = logged()
    candidates = [c for c in calls if c.message is not None and len(c.literal) >= SHORTEST]
    candidates += dynamic_sources(calls)
    candidates += code_strings()
    patterns = [call.regex() for call in candidates]
    unknown = [quote for quote in quotes() if not any(p.fullmatch(quote) for p in patterns)]
    assert not unknown, "quoted in docs/troubleshooting.md but written nowhere:\n" + "\n".join(
        unknown
    )


def test_the_parser_reads_each_kind_of_call(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text(
        "import logging\n"
        "log = logging.getLogger('x')\n"
        "log.warning('plain %s line %d', a, b)\n"
        "log.info('not this one')\n"
        "logging.getLogger('y').error(f'made {x} here')\n"
        "throttled.warning(f'key:{k}', 'throttled %r', s)\n"
        "log.log(logging.DEBUG, 'quiet')\n"
        "log.log(level, '%s; again', e)\n"
        "stranger_log.warning(text)\n"
        "warnings.warn('not a log line')\n"
    )
    calls = list(log_calls(tmp_path, ("pkg",)))
    assert [c.message for c in calls] == [
        f"plain {HOLE} line {HOLE}", f"made {HOLE} here", f"throttled {HOLE}", f"{HOLE}; again",
        None,
    ]  # fmt: skip
    assert calls[0].regex().fullmatch("plain <x> line 12")
