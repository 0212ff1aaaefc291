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


def curl_examples() -> list[tuple[str, str]]:
    """(command, expected output) for each `$ curl` line (with its continuation lines) of the README."""
    out = []
    for block in blocks("console"):
        lines = block.splitlines()
        i = 0
        while i < len(lines):
            if not lines[i].startswith("$ curl "):
                i += 1
                continue
            command = lines[i][2:]
            while command.endswith("\\") or command.count("'") % 2:  # a continued line, or an open quote
                i += 1
                command = command + "\n" + lines[i]
            i += 1
            expected = []
            while i < len(lines) and not lines[i].startswith("$ "):
                expected.append(lines[i])
                i += 1
            out.append((command, "\n".join(expected)))
    return out


def same_json(want: object, got: object, tolerance: float = 1e-3) -> None:
    """Equal structure and text; numbers within tolerance (the test server's models are smaller)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), (want, got)
        for key in want:
            same_json(want[key], got[key], tolerance)
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), (want, got)
        for w, g in zip(want, got, strict=True):
            same_json(w, g, tolerance)
    elif isinstance(want, float) or (isinstance(want, int) and not isinstance(want, bool) and isinstance(got, float)):
        assert isinstance(got, int | float) and abs(got - want) <= tolerance, (want, got)
    else:
        assert got == want, (want, got)


def test_the_readme_has_curl_examples():
    assert len(curl_examples()) >= 4


@pytest.mark.parametrize(("command", "expected"), curl_examples(), ids=lambda v: v.split("\n")[0][:60])
def test_curl_examples_answer_what_the_readme_shows(server, command, expected):
    """Each curl line runs verbatim (but for the port) against the test server's HTTP endpoint."""
    import json
    import shutil
    import subprocess

    if shutil.which("curl") is None:
        pytest.fail("curl is not installed: the README's HTTP examples need it")
    here = command.replace("localhost:8000", f"127.0.0.1:{server.http_port}")
    result = subprocess.run(["bash", "-c", here], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    same_json(json.loads(expected), json.loads(result.stdout))
