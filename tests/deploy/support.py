"""What the deploy tests share: paths, the real command lines, and reading shell commands.

Flags are checked against the click commands themselves (``server.cli.cli`` and
``client.cli.cli``), so a renamed or removed flag fails the artifact that still uses it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import socketserver
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path

import click

from client.cli import cli as client_cli
from server.cli import cli as server_cli
from tests.deploy import dockerfile

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OPERATIONS = REPO / "docs" / "operations.md"
DOCKERFILE = DEPLOY / "Dockerfile"

#: The command behind each role, by the names the artifacts use for them.
ROLES: dict[str, click.Command] = {
    "server": server_cli,
    "client": client_cli,
    "ambassador-server": server_cli,
    "ambassador-client": client_cli,
}

#: Docker link variables: what a Kubernetes pod must not hand to a tunnel by accident.
LINK_VARIABLE = re.compile(r"[A-Z][A-Z0-9_]*_PORT_[0-9]+_TCP")


def console_scripts() -> dict[str, str]:
    """``[project.scripts]`` of pyproject.toml: command name -> entry point."""
    with open(REPO / "pyproject.toml", "rb") as file:
        return dict(tomllib.load(file)["project"]["scripts"])


def options_of(command: click.Command) -> dict[str, click.Parameter]:
    """Every spelling of every option of ``command`` (``--tls`` and ``--no-tls`` alike)."""
    options: dict[str, click.Parameter] = {}
    for param in command.get_params(click.Context(command)):
        if isinstance(param, click.Option):
            for name in (*param.opts, *param.secondary_opts):
                options[name] = param
    return options


def _takes_value(param: click.Parameter) -> bool:
    return not (isinstance(param, click.Option) and (param.is_flag or param.count))


def unknown_flags(command: click.Command, args: Sequence[str]) -> list[str]:
    """The options in ``args`` that ``command`` (or the subcommand they name) does not have.

    Walks ``args`` as click would: an option that takes a value skips the next argument, and a
    word naming a subcommand of a group continues with that subcommand's options.
    """
    unknown: list[str] = []
    current = command
    options = options_of(current)
    words = iter(args)
    for word in words:
        if word.startswith("-") and word != "-":
            name = word.split("=", 1)[0]
            param = options.get(name)
            if param is None:
                unknown.append(name)
            elif _takes_value(param) and "=" not in word:
                next(words, None)
        elif isinstance(current, click.Group) and word in current.commands:
            current = current.commands[word]
            options = options_of(current)
    return unknown


def option_value(args: Sequence[str], flag: str) -> str | None:
    """The value given to ``flag`` in ``args`` (``--flag VALUE`` or ``--flag=VALUE``), last wins."""
    value = None
    for i, word in enumerate(args):
        if word == flag and i + 1 < len(args):
            value = args[i + 1]
        elif word.startswith(flag + "="):
            value = word.split("=", 1)[1]
    return value


def code_blocks(markdown: str) -> Iterator[str]:
    """The fenced code blocks of a Markdown text."""
    yield from re.findall(r"^```[a-z]*\n(.*?)^```", markdown, flags=re.MULTILINE | re.DOTALL)


def shell_commands(markdown: str) -> Iterator[list[str]]:
    """Each command line of the Markdown's code blocks, continuation lines joined, as words."""
    for block in code_blocks(markdown):
        for line in block.replace("\\\n", " ").splitlines():
            try:
                words = shlex.split(line, comments=True)
            except ValueError:  # not shell (a TOML or YAML block)
                continue
            if words:
                yield words


PROGRAMS = ("ambassador-server", "ambassador-client")
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=.*")
_IMAGE = re.compile(r"(?:.*/)?ambassador(?::[\w.-]+)?")


def ambassador_invocations(markdown: str) -> Iterator[tuple[str, list[str]]]:
    """(program, arguments) for each run of ambassador-server/-client in the Markdown's code.

    Recognised: the program as the command (after ``sudo`` or ``VAR=value``), run inside a
    container (``docker exec``, ``docker compose exec``, ``kubectl exec``), and the image run
    with a role (``docker run ... ambassador:TAG server ARGS``).
    """
    for words in shell_commands(markdown):
        while words and (words[0] == "sudo" or _ASSIGNMENT.fullmatch(words[0])):
            words = words[1:]
        if not words:
            continue
        if Path(words[0]).name in PROGRAMS:
            yield Path(words[0]).name, words[1:]
        elif words[0] in ("docker", "kubectl") and "exec" in words:
            at = [i for i, word in enumerate(words) if word in PROGRAMS]
            if at:
                yield words[at[-1]], words[at[-1] + 1 :]
        elif words[:2] == ["docker", "run"]:
            for i, word in enumerate(words[:-1]):
                if _IMAGE.fullmatch(word) and words[i + 1] in ("server", "client"):
                    yield f"ambassador-{words[i + 1]}", words[i + 2 :]
                    break


def healthcheck_argv(final: dockerfile.Stage) -> list[str]:
    (check,) = final.all("HEALTHCHECK")
    _, rest = check.options()
    kind, _, command = rest.partition(" ")
    assert kind.upper() == "CMD", "HEALTHCHECK should run a command (HEALTHCHECK ... CMD [...])"
    argv = dockerfile.exec_form(command)
    assert argv is not None, "HEALTHCHECK CMD should use the exec form: the image has a venv"
    return argv


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


def run_healthcheck(argv: list[str], metrics: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AMBASSADOR_METRICS_LISTEN": metrics}
    # The image's python is the venv's; here, the one running the tests.
    return subprocess.run(
        [sys.executable, *argv[1:]], env=env, capture_output=True, text=True, timeout=20
    )


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@contextlib.contextmanager
def echo_server() -> Iterator[int]:
    """A TCP echo service on loopback, for a backend; yields its port."""
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo) as server:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield server.server_address[1]
        finally:
            server.shutdown()
