"""The ``workflows`` package: pure modules, and the old import path still works."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import dreamgen_async
import dreamgen_async.workflow_builder as shim
import dreamgen_async.workflows as workflows

PURE_MODULES = [
    "dreamgen_async.workflows",
    "dreamgen_async.workflows.graph",
    "dreamgen_async.workflows.builder",
    "dreamgen_async.workflows.api",
    "dreamgen_async.workflows.ui",
    "dreamgen_async.workflows.recipes",
    "dreamgen_async.workflows.masks",
]


def _imported_roots(module_name: str) -> set[str]:
    module = importlib.import_module(module_name)
    assert module.__file__ is not None
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    return {name.split(".")[0] for name in names}


@pytest.mark.parametrize("module_name", PURE_MODULES)
def test_workflow_modules_import_no_io_library(module_name: str) -> None:
    roots = _imported_roots(module_name)

    assert not roots & {"asyncio", "aiohttp", "aiofiles", "socket", "urllib", "http"}


@pytest.mark.parametrize("name", sorted(shim.__all__))
def test_old_module_re_exports_the_same_objects(name: str) -> None:
    assert getattr(shim, name) is getattr(workflows, name)


def test_package_exports_match_the_top_level_names() -> None:
    for name in set(workflows.__all__) & set(dreamgen_async.__all__):
        assert getattr(dreamgen_async, name) is getattr(workflows, name)
