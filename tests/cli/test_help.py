"""Help texts: the top-level help lists every registered command (each group's help its subcommands), and each
command's help carries its own example, which is a valid invocation of that command."""

from __future__ import annotations

import re
import shlex

import pytest
import typer
from typer.testing import CliRunner

from grads.cli import app

ROOT_COMMAND = typer.main.get_command(app)


def groups(group=ROOT_COMMAND, path=()):
    """(path, group) for the root and every command group under it."""
    yield path, group
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from groups(command, (*path, name))


LEAVES = {(*path, name): command for path, group in groups() for name, command in group.commands.items()
          if not hasattr(command, "commands")}


def help_text(*path: str) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def listed_commands(text: str) -> list[str]:
    """The names in the help's Commands panel, in order (a description's wrapped lines start with spaces)."""
    panel = text[text.index("─ Commands ─"):]
    panel = panel[:panel.index("╰")]
    return re.findall(r"^│ (\S+)  ", panel, flags=re.MULTILINE)


def test_the_help_tests_walk_every_command():
    assert sorted(" ".join(path) for path in LEAVES) == [
        "compare", "data inspect", "data plant", "data prepare", "eval", "experiment", "models cache", "models list",
        "score", "select", "train"]


@pytest.mark.parametrize("path", [path for path, _ in groups()], ids=lambda p: " ".join(p) or "grads")
def test_each_help_lists_every_registered_command(path):
    group = dict(groups())[path]
    assert listed_commands(help_text(*path)) == list(group.commands)


@pytest.mark.parametrize("path", list(LEAVES), ids=" ".join)
def test_every_command_has_help_with_an_example_that_the_command_accepts(path):
    command = LEAVES[path]
    # the example is the docstring paragraph that starts with `Example: grads PATH`, possibly wrapped
    paragraphs = [" ".join(p.split()) for p in command.help.split("\n\n")]
    (example,) = [p for p in paragraphs if p.startswith("Example: grads ")]
    argv = shlex.split(example.removeprefix("Example: grads "))
    assert tuple(argv[:len(path)]) == path, example  # its own example, not another command's
    assert example in " ".join(help_text(*path).replace("│", " ").split())  # shown in the help as written
    # every option it uses exists, every required argument is given, every value converts
    context = command.make_context(" ".join(path), argv[len(path):])  # raises on a bad example
    assert context.args == [] and set(context.params) == {p.name for p in command.params}


def test_version_is_declared_once_and_printed():
    """`grads --version` prints the version the installed package's metadata carries (pyproject.toml reads it from
    grads/_version.py, the one place it is written)."""
    import importlib.metadata

    import grads

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"grads {importlib.metadata.version('grads-llm')}" == f"grads {grads.__version__}"
