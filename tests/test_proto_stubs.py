"""The checked-in protobuf/gRPC code matches proto/ (regenerated with the pinned grpcio-tools)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_up_to_date() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "proto" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "up to date" in done.stdout


def test_stubs_describe_the_services_of_the_proto() -> None:
    from seqserve.api import seqserve_pb2 as pb

    text = (ROOT / "proto" / "seqserve" / "v1" / "seqserve.proto").read_text()
    rpcs = {
        line.split()[1].split("(")[0]
        for line in text.splitlines()
        if line.strip().startswith("rpc ")
    }
    services = pb.DESCRIPTOR.services_by_name
    assert set(services) == {"Inference", "Admin"}
    assert services["Inference"].full_name == "seqserve.v1.Inference"
    assert {m.name for s in services.values() for m in s.methods} == rpcs
