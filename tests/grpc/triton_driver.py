"""Drive a server with tritonclient, in a process of its own: tritonclient's protobuf
descriptors define the same symbols as the server's KServe stubs, and one process can
hold only one set. Reads a plan (JSON) on stdin, prints what came back (JSON).

Plan: {"target": HOST:PORT, "mode": "stream" | "astream" | "unary", "token": str?,
       "requests": [{"id", "model", "values" (nested lists), "shape", "datatype"?,
                     "sequence_id"?, "start"?, "end"?, "outputs"?, "sleep"?}]}
Out:  {"answers": [{"id", "outputs" (flat), "shape", "datatype"} | {"error": message}],
       "metadata": {...}, "config": {...}} in the order they arrived.
Mode "describe" prints tritonclient's own descriptors instead (see describe()).
"""

from __future__ import annotations

import asyncio
import json
import queue
import sys
import time
from typing import Any

import numpy as np


def _inputs(r: dict[str, Any]) -> list[Any]:
    import tritonclient.grpc as tc

    dtype = r.get("datatype", "FP32")
    data = np.asarray(r["values"], dtype={"FP32": np.float32, "FP64": np.float64}[dtype])
    tensor = tc.InferInput(r.get("input", "x"), list(r["shape"]), dtype)
    tensor.set_data_from_numpy(data.reshape(r["shape"]))
    return [tensor]


def _outputs(r: dict[str, Any]) -> list[Any] | None:
    import tritonclient.grpc as tc

    names = r.get("outputs")
    return None if names is None else [tc.InferRequestedOutput(n) for n in names]


def _kwargs(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "model_name": r["model"],
        "inputs": _inputs(r),
        "outputs": _outputs(r),
        "request_id": r["id"],
        "sequence_id": r.get("sequence_id", 0),
        "sequence_start": r.get("start", False),
        "sequence_end": r.get("end", False),
    }


def _answer(result: Any, error: Any, output: str = "y") -> dict[str, Any]:
    if error is not None:
        return {"error": str(error.message())}
    array = result.as_numpy(output)
    tensor = result.get_output(output)
    return {
        "id": result.get_response().id,
        "outputs": array.ravel().tolist(),
        "shape": list(array.shape),
        "datatype": tensor.datatype,
    }


def stream(plan: dict[str, Any], headers: dict[str, str]) -> list[dict[str, Any]]:
    import tritonclient.grpc as tc

    got: queue.Queue[dict[str, Any]] = queue.Queue()
    client = tc.InferenceServerClient(plan["target"])
    client.start_stream(
        callback=lambda result, error: got.put(_answer(result, error)), headers=headers
    )
    for r in plan["requests"]:
        time.sleep(r.get("sleep", 0.0))
        client.async_stream_infer(**_kwargs(r))
    answers = [got.get(timeout=30) for _ in plan["requests"]]
    client.stop_stream()
    client.close()
    return answers


async def astream(plan: dict[str, Any], headers: dict[str, str]) -> list[dict[str, Any]]:
    import tritonclient.grpc.aio as tca

    client = tca.InferenceServerClient(plan["target"])

    async def requests() -> Any:
        for r in plan["requests"]:
            await asyncio.sleep(r.get("sleep", 0.0))
            yield _kwargs(r)

    answers = []
    async for result, error in client.stream_infer(requests(), headers=headers):
        answers.append(_answer(result, error))
        if len(answers) == len(plan["requests"]):
            break
    await client.close()
    return answers


def unary(plan: dict[str, Any], headers: dict[str, str]) -> list[dict[str, Any]]:
    import tritonclient.grpc as tc
    from tritonclient.utils import InferenceServerException

    client = tc.InferenceServerClient(plan["target"])
    answers = []
    for r in plan["requests"]:
        time.sleep(r.get("sleep", 0.0))
        try:
            answers.append(_answer(client.infer(**_kwargs(r), headers=headers), None))
        except InferenceServerException as exc:
            answers.append({"error": str(exc.message()), "status": exc.status()})
    client.close()
    return answers


def info(plan: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    """What tritonclient's discovery calls return, as JSON."""
    import tritonclient.grpc as tc

    client = tc.InferenceServerClient(plan["target"])
    model = plan["model"]
    out = {
        "live": client.is_server_live(headers=headers),
        "ready": client.is_server_ready(headers=headers),
        "model_ready": client.is_model_ready(model, headers=headers),
        "unknown_ready": client.is_model_ready("no-such-model", headers=headers),
        "server": client.get_server_metadata(headers=headers, as_json=True),
        "metadata": client.get_model_metadata(model, headers=headers, as_json=True),
        "config": client.get_model_config(model, headers=headers, as_json=True),
    }
    client.close()
    return out


def describe() -> dict[str, Any]:
    """Every message, field, enum and method of tritonclient's inference package."""
    from tritonclient.grpc import model_config_pb2, service_pb2

    from tests.grpc.descriptors import describe_files

    return describe_files([service_pb2.DESCRIPTOR, model_config_pb2.DESCRIPTOR])


def main() -> None:
    plan = json.load(sys.stdin)
    mode = plan["mode"]
    headers = {"authorization": f"Bearer {plan['token']}"} if plan.get("token") else {}
    if mode == "describe":
        out: Any = describe()
    elif mode == "info":
        out = info(plan, headers)
    elif mode == "astream":
        out = {"answers": asyncio.run(astream(plan, headers))}
    else:
        out = {"answers": {"stream": stream, "unary": unary}[mode](plan, headers)}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
