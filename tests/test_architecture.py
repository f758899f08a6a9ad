"""The dependency direction of the packages, the package itself, and the committed layout."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    # package: top-level modules it must never import
    "telemetry": {"proxy", "addons", "proto", "auth", "mitmproxy", "grpc", "grpc_health", "grpc_reflection"},
    "auth": {"proxy", "addons", "proto", "telemetry", "mitmproxy", "grpc"},
    "addons": {"proxy", "proto"},
    "proto": {"proxy", "addons", "mitmproxy"},
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_dependency_direction(package):
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
            continue
        for name in imports_of(path):
            if name.split(".")[0] in FORBIDDEN[package]:
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not offenders, "\n".join(offenders)


def addon_modules() -> dict[str, Path]:
    """Modules in addons/ that define a mitmproxy addon class (a class with hook methods)."""
    hooks = {"request", "response", "requestheaders", "responseheaders", "error", "http_connect",
             "tls_clienthello", "client_connected", "load", "running", "done"}
    found = {}
    for path in (ROOT / "addons").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                methods = {n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
                if methods & hooks:
                    found[path.stem] = path
    return found


def test_no_addon_imports_another_addon():
    addons = addon_modules()
    assert {"router", "forwarded", "forwardguard"} <= set(addons)
    offenders = []
    for name, path in addons.items():
        for imported in imports_of(path):
            parts = imported.split(".")
            if parts[0] == "addons" and len(parts) > 1 and parts[1] in addons and parts[1] != name:
                offenders.append(f"addons/{name}.py imports {imported}")
    assert not offenders, "\n".join(offenders)


def test_proto_package_is_ours_not_proto_plus():
    import proto

    assert Path(proto.__file__).resolve().parent == ROOT / "proto"


def test_wheel_contains_every_package_and_the_console_script(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=120)
    wheel = next(tmp_path.glob("portico-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "portico = proxy.cli:main" in zf.read(entry_points).decode()
    for package in ("proxy", "addons", "telemetry", "auth", "proto"):
        assert f"{package}/__init__.py" in names
    assert not any(n.startswith("tests/") for n in names)
    for asset in ("addons/static/login.html", "addons/static/portico.js"):
        assert asset in names, f"{asset} missing from the wheel: add it to package-data"
