"""The README's examples, run against a real server: what it shows is what the code prints.

Every `$ mdn-client ...` line in a console block of README.md whose model the test repository
serves is run (in-process, against the test server); its output must have the README's lines,
words and names, with numbers within a tolerance: refined IK angles are exact in both (1e-3), a
mixture's modes come from the smaller test model (0.05), errors, masses and densities are
compared by kind only. The Python snippets that use only mdn-serve are executed.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from mdn_serve.tools import client_cli

README = Path(__file__).resolve().parent.parent / "README.md"
SERVED = ("two_link_arm", "inverse_sine")  # what the test repository holds
NUMBER = re.compile(r"^-?\d+(\.\d+)?(e[-+]?\d+)?$")
LOOSE = ("mass", "log_density", "error", "misses")  # words after which numbers depend on the model
TOLERANCE = {"ik": 1e-3, "modes": 0.05}


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", README.read_text(), flags=re.S)


def console_examples() -> list[tuple[str, list[str]]]:
    """(command, expected output lines) for each `$ mdn-client` line."""
    out = []
    for block in blocks("console"):
        command: str | None = None
        lines: list[str] = []
        for line in block.splitlines():
            if line.startswith("$ "):
                if command is not None:
                    out.append((command, lines))
                command, lines = line[2:], []
            elif command is not None:
                lines.append(line)
        if command is not None:
            out.append((command, lines))
    return [(c, lines) for c, lines in out if "mdn-client" in c and any(f"--model {m}" in c for m in SERVED)]


def tokens(line: str) -> list[str]:
    return re.split(r"[\s=:,()]+", line.strip())


def compare(expected: list[str], got: list[str], tolerance: float) -> None:
    assert len(got) == len(expected), (expected, got)
    for want_line, got_line in zip(expected, got, strict=True):
        want, have = tokens(want_line), tokens(got_line)
        assert len(have) == len(want), (want_line, got_line)
        loose = False
        for w, h in zip(want, have, strict=True):
            if NUMBER.match(w):
                assert NUMBER.match(h), (w, h, got_line)
                if not loose:
                    assert abs(float(w) - float(h)) <= tolerance, (w, h, got_line)
                loose = False
            else:
                assert w == h or (w.startswith("v") and h.startswith("v")), (w, h, got_line)
                loose = any(word in w for word in LOOSE)


@pytest.mark.parametrize(("command", "expected"), console_examples(), ids=lambda v: v if isinstance(v, str) else "")
def test_console_examples_print_what_the_readme_shows(server, capsys, command, expected):
    argv = shlex.split(command)[1:]
    argv = [a for i, a in enumerate(argv) if a != "--target" and (i == 0 or argv[i - 1] != "--target")]
    assert client_cli.main(["--target", server.target, *argv]) == 0
    got = capsys.readouterr().out.rstrip("\n").splitlines()
    compare(expected, got, TOLERANCE["ik" if " ik " in command else "modes"])


def test_the_python_client_snippet_runs(server, capsys):
    snippet = next(b for b in blocks("python") if "MdnClient(" in b)
    exec(snippet.replace("localhost:8001", server.target), {})  # the README's own code
    printed = capsys.readouterr().out
    assert re.match(r"\[\d+, \d+\] \[\[", printed), printed  # modes per row (a list), then the first row's


def test_every_example_model_is_covered():
    assert len(console_examples()) >= 2  # the modes and the planar ik examples
