"""Regenerate the committed Python code for every .proto under proto/.

Run from anywhere: `.venv/bin/python proto/generate.py`. Code is generated with the repository
root as the include path, so the generated modules import each other as
`from proto.portico.v1 import analytics_pb2` (the package path, not a bare `analytics_pb2`).
`tests/proto/test_generated.py` regenerates into a temporary directory and fails when the
committed files differ, so edit the .proto, run this, and commit both.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "proto"


def proto_files() -> list[Path]:
    """Every .proto file of ours, relative to the repository root, in a stable order."""
    return sorted(p.relative_to(ROOT) for p in PROTO_DIR.rglob("*.proto"))


def generated_names(proto: Path) -> list[Path]:
    """The files protoc writes for one .proto (relative to the output directory)."""
    stem = proto.with_suffix("")
    return [stem.parent / f"{stem.name}{suffix}" for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")]


def generate(out_dir: Path = ROOT) -> list[Path]:
    """Run protoc (grpcio-tools) on every .proto, writing into `out_dir`; returns files written.

    Raises:
        RuntimeError: protoc failed (its message is on stderr).
    """
    from grpc_tools import protoc

    well_known = resources.files("grpc_tools") / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    files = proto_files()
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(ROOT / f) for f in files),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed for {', '.join(map(str, files))}")
    return [out_dir / name for f in files for name in generated_names(f)]


if __name__ == "__main__":
    for path in generate():
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    sys.exit(0)
