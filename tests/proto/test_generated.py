"""The committed generated code matches what proto/generate.py produces from the .proto files."""

from __future__ import annotations

from pathlib import Path

from proto import generate


def test_committed_generated_code_has_not_drifted(tmp_path: Path) -> None:
    written = generate.generate(tmp_path)
    assert written, "no .proto files found"
    drifted = []
    for path in written:
        relative = path.relative_to(tmp_path)
        committed = generate.ROOT / relative
        if not committed.exists() or committed.read_bytes() != path.read_bytes():
            drifted.append(str(relative))
    assert not drifted, f"regenerate with `.venv/bin/python proto/generate.py` and commit: {drifted}"


def test_generated_modules_import_through_the_package_path() -> None:
    grpc_module = (generate.ROOT / "proto/portico/v1/analytics_pb2_grpc.py").read_text()
    assert "from proto.portico.v1 import analytics_pb2" in grpc_module
    from proto.portico.v1 import analytics_pb2

    assert analytics_pb2.DESCRIPTOR.package == "portico.v1"
    assert set(analytics_pb2.DESCRIPTOR.services_by_name["Analytics"].methods_by_name) == {
        "Record", "Query", "ListEvents", "Funnel", "Export", "Stats"}
