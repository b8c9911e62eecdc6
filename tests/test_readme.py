"""The README's examples work as written: its Python blocks run, its `tfvae` commands parse.

The Python blocks run in order in one fresh `python -` process, in an empty folder, as a reader
pastes them into one session; every `tfvae ...` command line and every flag named in the prose is
checked against `tfvae.cli.build_parser()`, so a renamed flag breaks a test.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, cli_environment

from tfvae.cli import build_parser

README = REPO_ROOT / "README.md"
#: A fenced block: its language (may be empty) and its code.
FENCED_BLOCK = re.compile(r"^```(?P<language>[\w-]*)\n(?P<code>.*?)^```[ \t]*$", re.S | re.M)
SHELL_OPERATORS = {"&&", "||", ";", "|"}

# Runs each block with the README's line numbers (tracebacks show README.md's lines) and says
# which block failed; `README_TEXT` and `BLOCKS` are defined above it.
DRIVER = """
import linecache
import sys
import time
import traceback

linecache.cache["README.md"] = (len(README_TEXT), None, README_TEXT.splitlines(True), "README.md")
namespace = {"__name__": "__main__"}
for number, (line, code) in enumerate(BLOCKS, 1):
    started = time.perf_counter()
    try:
        exec(compile("\\n" * (line - 1) + code, "README.md", "exec"), namespace)
    except BaseException as error:
        traceback.print_exc()
        summary = " ".join(traceback.format_exception_only(type(error), error)[-1].split())
        print(f"README_BLOCK_FAILED {number} {line} {summary}", file=sys.stderr, flush=True)
        sys.exit(1)
    print(f"README_BLOCK_DONE {number} line {line}: {time.perf_counter() - started:.1f} s", flush=True)
"""


def fenced_blocks(text: str) -> list[tuple[str, int, str]]:
    """Every fenced block of `text` as `(language, line of its first code line, code)`."""
    return [
        (match["language"], text.count("\n", 0, match.start("code")) + 1, match["code"])
        for match in FENCED_BLOCK.finditer(text)
    ]


def tfvae_command_lines(text: str) -> list[tuple[int, list[str]]]:
    """`(line, argv after "tfvae")` of every `tfvae` command in the README's shell and text blocks.

    Backslash continuations are joined, comments and leading `VAR=value` assignments dropped, and
    `a && b` split into its commands; in text blocks only `$ ` prompt lines count.
    """
    commands = []
    for language, first_line, code in fenced_blocks(text):
        if language == "python":
            continue
        lines = code.splitlines()
        index = 0
        while index < len(lines):
            start, line = index, lines[index]
            while line.endswith("\\") and index + 1 < len(lines):
                index += 1
                line = line[:-1] + " " + lines[index]
            index += 1
            if language != "bash":
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            tokens = shlex.split(line, comments=True)
            command: list[str] = []
            for token in [*tokens, ";"]:
                if token not in SHELL_OPERATORS:
                    command.append(token)
                    continue
                while command and re.fullmatch(r"[A-Za-z_]\w*=.*", command[0]):
                    command.pop(0)
                if command and command[0] == "tfvae":
                    commands.append((first_line + start, command[1:]))
                command = []
    return commands


def prose_flags(text: str) -> list[tuple[int, str]]:
    """`(line, flag)` of every `--flag` in an inline code span that is a flag or a `tfvae` command."""
    prose = FENCED_BLOCK.sub(lambda match: "\n" * match[0].count("\n"), text)
    flags = []
    for match in re.finditer(r"`([^`\n]+)`", prose):
        tokens = match[1].replace("[", " ").replace("]", " ").split()
        if tokens and (tokens[0] == "tfvae" or tokens[0].startswith("--")):
            line = prose.count("\n", 0, match.start()) + 1
            flags += [(line, token.split("=")[0]) for token in tokens if token.startswith("--")]
    return flags


def all_option_strings(parser) -> set[str]:
    """The option strings of `tfvae` and of all its commands."""
    options = set(parser._option_string_actions)
    for action in parser._subparsers._group_actions:
        for command in action.choices.values():
            options |= set(command._option_string_actions)
    return options


@pytest.mark.slow
def test_readme_python_blocks_run_in_order_in_one_session(tmp_path):
    readme = README.read_text()
    blocks = [(line, code) for language, line, code in fenced_blocks(readme) if language == "python"]
    assert len(blocks) >= 7, blocks  # the API, export, tf.data, TFSMLayer, data, distribute, tuning
    program = f"README_TEXT = {readme!r}\nBLOCKS = {blocks!r}\n{DRIVER}"
    try:
        result = subprocess.run(
            [sys.executable, "-"],
            input=program,
            cwd=tmp_path,
            env=cli_environment(),
            capture_output=True,
            text=True,
            timeout=900,
        )
    except subprocess.TimeoutExpired as timeout:
        output = timeout.stdout.decode() if isinstance(timeout.stdout, bytes) else timeout.stdout or ""
        done = re.findall(r"^README_BLOCK_DONE (\d+)", output, flags=re.M)
        pytest.fail(f"README ```python block {len(done) + 1} still ran after {timeout.timeout} s (blocks done: {done})")
    failed = re.search(r"^README_BLOCK_FAILED (\d+) (\d+) (.*)$", result.stderr, flags=re.M)
    if failed:
        number, line, error = failed.groups()
        traceback = result.stderr[result.stderr.rfind("Traceback (most recent call last)"):failed.start()]
        pytest.fail(f"README ```python block {number} (README.md line {line}) failed: {error}\n{traceback}")
    assert result.returncode == 0, result.stderr[-3000:]
    done = re.findall(r"^README_BLOCK_DONE .*$", result.stdout, flags=re.M)
    assert len(done) == len(blocks), result.stdout[-3000:]
    print("\n".join(done))  # each block's time, shown with `pytest -s`


def test_readme_tfvae_command_lines_parse():
    readme = README.read_text()
    commands = tfvae_command_lines(readme)
    # Quick start, train (4), sample (3), export, evaluate, GPUs (2), machines (2), tune at least.
    assert len(commands) >= 15, commands
    assert {argv[0] for _, argv in commands} >= {"train", "evaluate", "sample", "export", "tune"}
    failures = []
    for line, argv in commands:
        errors = io.StringIO()
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            try:
                build_parser().parse_args(argv)
            except SystemExit as exit_:
                message = errors.getvalue().strip().splitlines()[-1:] or [f"exit status {exit_.code}"]
                failures.append(f"README.md line {line}: tfvae {shlex.join(argv)}: {message[0]}")
    assert not failures, "\n".join(failures)


def test_readme_prose_names_only_flags_that_exist():
    flags = prose_flags(README.read_text())
    assert len(flags) >= 30, flags
    known = all_option_strings(build_parser())
    unknown = [f"README.md line {line}: {flag}" for line, flag in flags if flag not in known]
    assert not unknown, "flags that tfvae does not have:\n" + "\n".join(unknown)


def test_readme_checks_catch_a_renamed_flag_and_a_failing_block():
    # The helpers above must see what they are meant to check, or the tests prove nothing.
    text = (
        "Run `tfvae train --latent-dims 2` or `--no-such-flag`.\n\n"
        "```bash\nFOO=1 tfvae train --epochs 3 && tfvae sample runs/x \\\n    --out a.png  # a comment\n```\n\n"
        "```text\n$ tfvae evaluate runs/x --samples 10\noutput tfvae train --not-parsed\n```\n\n"
        "```python\nprint(1)\n```\n"
    )
    assert tfvae_command_lines(text) == [
        (4, ["train", "--epochs", "3"]), (4, ["sample", "runs/x", "--out", "a.png"]),
        (9, ["evaluate", "runs/x", "--samples", "10"]),
    ]
    assert prose_flags(text) == [(1, "--latent-dims"), (1, "--no-such-flag")]
    assert [(language, line) for language, line, _ in fenced_blocks(text)] == [("bash", 4), ("text", 9), ("python", 14)]
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
        build_parser().parse_args(["train", "--latent-dims", "2"])  # a tune flag, not a train flag
