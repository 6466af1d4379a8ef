"""`python/pvrs/_core.pyi` must describe exactly what the compiled module exports."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pvrs
from pvrs import _core

STUB = Path(pvrs.__file__).with_name("_core.pyi")


def _stub_functions() -> dict[str, list[str]]:
    tree = ast.parse(STUB.read_text())
    out: dict[str, list[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            args = node.args
            names = [a.arg for a in args.posonlyargs + args.args]
            names += ["*" + args.vararg.arg] if args.vararg else []
            names += [a.arg for a in args.kwonlyargs]
            out[node.name] = names
    return out


def _runtime_functions() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, obj in vars(_core).items():
        if callable(obj) and not isinstance(obj, type):
            params = inspect.signature(obj).parameters.values()
            out[name] = [("*" + p.name) if p.kind is p.VAR_POSITIONAL else p.name for p in params]
    return out


def test_stub_exists_and_is_shipped() -> None:
    assert STUB.is_file()


def test_stub_lists_every_native_function_with_its_parameters() -> None:
    assert _stub_functions() == _runtime_functions()


def test_stub_declares_module_attributes() -> None:
    tree = ast.parse(STUB.read_text())
    declared = {n.target.id for n in tree.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    runtime = {k for k, v in vars(_core).items() if not k.startswith("__") or k == "__version__"}
    runtime = {k for k in runtime if not callable(getattr(_core, k))}
    assert declared == runtime
