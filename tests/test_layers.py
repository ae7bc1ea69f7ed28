"""The layers stay layers: read every module's imports (ast) and check who may import what.

- the serving core (seqserve.core) imports no gRPC, no generated protobuf code,
  no front end, store, client, CLI or benchmark;
- a store imports the core only, never a front end;
- the client imports no server module (only the native stubs and itself);
- nothing that serves (core, store, gRPC front end, client, CLI, settings)
  imports torch or the training stack;
- nothing imports the repository's folder names `service` or `models` as
  packages: the one import name is `seqserve`.

Imports inside functions count: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Source folder -> the package it is installed as (pyproject's package-dir).
SOURCES = {ROOT / "service": "seqserve", ROOT / "models": "seqserve.models"}

TRAINING = ("torch", "onnx", "onnxscript", "statsmodels", "tqdm")
TRANSPORT = ("grpc", "grpc_health", "grpc_reflection", "google.protobuf", "seqserve.api")
SERVING = (
    "seqserve.core",
    "seqserve.store",
    "seqserve.grpc",
    "seqserve.kserve",
    "seqserve.client",
    "seqserve.cli",
    "seqserve.settings",
    "seqserve.api",
    "seqserve.__main__",
)


@dataclass(frozen=True)
class Rule:
    layer: tuple[str, ...]  # the modules it applies to (packages and their submodules)
    forbidden: tuple[str, ...]
    why: str


RULES = [
    Rule(
        ("seqserve.core",),
        (
            *TRANSPORT,
            "seqserve.grpc",
            "seqserve.kserve",
            "seqserve.store",
            "seqserve.client",
            "seqserve.bench",
            "seqserve.cli",
            "seqserve.settings",
        ),
        "the core is transport-free and knows no front end or store",
    ),
    Rule(
        ("seqserve.store",),
        (
            *TRANSPORT,
            "seqserve.grpc",
            "seqserve.kserve",
            "seqserve.client",
            "seqserve.bench",
            "seqserve.cli",
        ),
        "a store serves the core, not a front end",
    ),
    Rule(
        ("seqserve.client",),
        (
            "seqserve.core",
            "seqserve.store",
            "seqserve.grpc",
            "seqserve.kserve",
            "seqserve.api.inference_pb2",
            "seqserve.api.inference_pb2_grpc",
            "seqserve.bench",
            "seqserve.settings",
            "onnxruntime",
        ),
        "the client needs only the wire contract (and never the KServe stubs: tritonclient "
        "defines the same protobuf symbols, and an application may import both)",
    ),
    Rule(
        SERVING,
        (*TRAINING, "seqserve.models."),
        "nothing that serves imports torch or the training stack (seqserve.models itself, "
        "which only names the bundled repository, is light)",
    ),
    Rule(("",), ("service", "models"), "the one import name is seqserve"),
]


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    """`name` is one of `prefixes` or inside one ("" is every module, "a." only inside a)."""

    def inside(prefix: str) -> bool:
        if prefix == "" or prefix.endswith("."):
            return name.startswith(prefix)
        return name == prefix or name.startswith(prefix + ".")

    return any(map(inside, prefixes))


def module_name(path: Path) -> str:
    for folder, package in SOURCES.items():
        if path.is_relative_to(folder):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            return ".".join([package, *parts])
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)  # tests, deploy, proto


def project_modules() -> set[str]:
    return {module_name(p) for folder in SOURCES for p in folder.rglob("*.py")}


PROJECT = project_modules()


def imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in a module, relative ones resolved.

    `from a import b` imports a and, when b is a module, a.b: a name from one of
    the project's own modules counts only if it is a module of the project.
    """
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield node.lineno, target
            for alias in node.names:
                name = f"{target}.{alias.name}"
                if name in PROJECT or target not in PROJECT:
                    yield node.lineno, name


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    found = []
    for line, target in imports(ast.parse(source), module, is_package):
        for rule in RULES:
            if within(module, rule.layer) and within(target, rule.forbidden):
                found.append(f"{module}:{line} imports {target}: {rule.why}")
    return found


def project_files() -> list[Path]:
    files = []
    for top in ("service", "models", "tests", "deploy", "proto"):
        files += [p for p in (ROOT / top).rglob("*.py") if "api" not in p.relative_to(ROOT).parts]
    return sorted(files)


def test_every_module_keeps_to_its_layer() -> None:
    files = project_files()
    assert len(files) > 80  # the walk found the project
    found = []
    for path in files:
        found += violations(path.read_text(), module_name(path), path.name == "__init__.py")
    assert found == []


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("seqserve.core.sessions", "import grpc"),
        ("seqserve.core.rounds", "from seqserve.api import seqserve_pb2 as pb"),
        ("seqserve.core.batcher", "from ..grpc.status import to_status"),
        ("seqserve.core.slab", "def f():\n    from seqserve.grpc import servicer\n"),
        ("seqserve.core.slab", "from google.protobuf import message"),
        ("seqserve.core.sessions", "from seqserve.store.memory import MemoryDirectory"),
        ("seqserve.store.memory", "from seqserve.grpc.status import to_status"),
        ("seqserve.client.sync", "from seqserve.grpc.status import status_code"),
        ("seqserve.client.sync", "from seqserve.core import errors"),
        ("seqserve.grpc.server", "import torch"),
        ("seqserve.cli", "from seqserve.models.export import export_model"),
        ("tests.core.test_slab", "from service.core.slab import Slab"),
        ("seqserve.bench.run", "import models.export"),
    ],
)
def test_the_checker_catches_a_crossing(module: str, source: str) -> None:
    assert violations(source, module) != []


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("seqserve.core.sessions", "from seqserve.core.batcher import Batcher"),
        ("seqserve.store.memory", "from seqserve.core.directory import Session"),
        ("seqserve.client.sync", "from seqserve.api import seqserve_pb2 as pb\nimport grpc"),
        ("seqserve.grpc.servicer", "from seqserve.core.sessions import SessionManager"),
        ("seqserve.bench.modelrepo", "def f():\n    from seqserve.models.export import x\n"),
        ("seqserve.models.export", "import torch\nfrom seqserve.core.spec import ModelSpec"),
    ],
)
def test_the_checker_lets_allowed_imports_pass(module: str, source: str) -> None:
    assert violations(source, module) == []
