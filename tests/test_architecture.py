"""The layout is the architecture: what each package may import, how big a module may grow,
and what the serving install pulls in (the README's code map says the same in words)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "core", ROOT / "server", ROOT / "trainer"]
GENERATED = ROOT / "server" / "mdn_serve" / "_proto"

# package prefix -> imports it must not make (by module prefix)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "mdn_core": ("mdn_serve", "mdn_train", "grpc", "google.protobuf", "torch", "matplotlib"),
    "mdn_serve.serving": (
        "mdn_serve.protocols",
        "mdn_serve.tools",
        "mdn_serve.app",
        "mdn_serve._proto",
        "grpc",
        "google.protobuf",
        "mdn_train",
        "torch",
        "matplotlib",
    ),
    "mdn_serve.protocols": ("mdn_serve.tools", "mdn_serve.app", "mdn_train", "torch", "matplotlib"),
    "mdn_serve.tools": ("mdn_serve.serving", "mdn_serve.app", "mdn_serve.workers", "mdn_train", "torch"),
    "mdn_serve": ("mdn_serve.tools", "mdn_train", "torch", "matplotlib"),
    "mdn_train": ("mdn_serve",),
}


def modules() -> list[tuple[str, Path]]:
    found = []
    for base in SOURCES:
        for path in sorted(base.rglob("*.py")):
            if GENERATED in path.parents:
                continue
            parts = path.relative_to(base).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found.append((name, path))
    return found


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def rules_for(module: str) -> tuple[str, ...]:
    """The most specific rule that covers a module (mdn_serve.tools.client -> mdn_serve.tools)."""
    owner = max((p for p in FORBIDDEN if module == p or module.startswith(p + ".")), key=len, default=None)
    return FORBIDDEN[owner] if owner else ()


def test_every_package_imports_only_what_its_layer_allows():
    breaches = []
    for module, path in modules():
        for name in imports_of(path):
            for banned in rules_for(module):
                if (name == banned or name.startswith(banned + ".")) and not module.startswith(banned):
                    breaches.append(f"{module} imports {name}")
    assert not breaches, breaches


def test_only_codecs_build_protocol_messages():
    """Inside protocols/, generated classes are imported at run time by the codecs alone."""
    breaches = []
    for module, path in modules():
        if not module.startswith("mdn_serve.protocols"):
            continue
        tree = ast.parse(path.read_text())
        runtime_imports = [
            n for n in tree.body if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("mdn_serve._proto")
        ]
        if runtime_imports and module.rsplit(".", 1)[-1] not in ("codec", "tensors"):
            breaches.append(module)
    assert not breaches, breaches


def test_no_module_over_400_lines_and_no_class_over_200():
    too_long = []
    for module, path in modules():
        text = path.read_text()
        if text.count("\n") > 400:
            too_long.append(f"{module}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                size = node.end_lineno - node.lineno + 1
                if size > 200:
                    too_long.append(f"{module}.{node.name}: {size} lines")
    assert not too_long, too_long


@pytest.mark.parametrize("entry", ["mdn_serve.cli", "mdn_serve.app", "mdn_serve.workers", "mdn_serve.healthcheck"])
def test_the_server_import_graph_has_no_torch_matplotlib_or_tools(entry):
    code = (
        f"import sys, {entry}; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'matplotlib', 'mdn_train') "
        "or m.startswith('mdn_serve.tools')); print(','.join(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == ""


def test_the_serving_install_needs_no_torch_or_matplotlib():
    """pyproject's base dependencies (what the serving image installs) name neither."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"]).lower()
    assert "torch" not in base and "matplotlib" not in base
    assert "torch" in " ".join(project["optional-dependencies"]["train"])
