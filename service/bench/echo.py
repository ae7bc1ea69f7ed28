"""The transport floor: a grpc.aio server that speaks seqserve.v1.Inference with no model.

Each step is answered with a response of exactly the size and shape the real
server sends (T * output_size floats, the same ids and positions), so the
benchmark can tell what the transport itself costs on this machine. It runs
in its own process, like the real server, with the same server options.

    python -m seqserve.bench.echo --address 127.0.0.1:0 --input-size 1 --output-size 1

With --model, it is the inline reference instead: each stream step runs the
model at batch 1 on the event loop, state in a dict, the step's answer written
as soon as it is computed. No validation, batching, ordering, limits or
pipelining: the least any server on this transport and runtime can do for a
step, to show what scenario 1's floor (echo + ONNX Runtime measured back to
back, with warm caches) leaves out.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np

from seqserve.api import seqserve_pb2 as pb
from seqserve.api import seqserve_pb2_grpc as pb_grpc

if TYPE_CHECKING:  # the plain echo never loads ONNX Runtime
    from seqserve.core.runtime import LoadedModel

READY_PREFIX = "echo listening on "
Context = grpc.aio.ServicerContext[object, object]
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


def server_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    """The options service/server.py gives grpc.aio.server, so both meet the same transport."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]


class EchoInference(pb_grpc.InferenceServicer):
    """Answers like the server would, with zeros for outputs and no state."""

    def __init__(self, input_size: int, output_size: int) -> None:
        self._input_size = input_size
        self._output_size = output_size
        self._ids = itertools.count(1)
        self._zeros: dict[int, list[float]] = {}

    def _outputs(self, n: int) -> list[float]:
        z = self._zeros.get(n)
        if z is None:
            z = self._zeros[n] = [0.0] * n
        return z

    def _step(self, request: pb.StepRequest) -> pb.StepResponse:
        t = len(request.values) // self._input_size
        return pb.StepResponse(
            session_id=request.session_id,
            request_id=request.request_id,
            time=t,
            output_size=self._output_size,
            outputs=self._outputs(t * self._output_size),
            position=request.request_id * t,
        )

    async def CreateSession(
        self, request: pb.CreateSessionRequest, context: Context
    ) -> pb.SessionInfo:
        sid = request.session_id or f"{next(self._ids):032x}"  # as long as a minted id
        return pb.SessionInfo(session_id=sid, model=request.model, version="1", ttl_seconds=900.0)

    async def CloseSession(
        self, request: pb.CloseSessionRequest, context: Context
    ) -> pb.CloseSessionResponse:
        return pb.CloseSessionResponse(session_id=request.session_id)

    async def Step(self, request: pb.StepRequest, context: Context) -> pb.StepResponse:
        return self._step(request)

    async def StepStream(
        self, request_iterator: AsyncIterator[pb.StepRequest], context: Context
    ) -> AsyncIterator[pb.StepResponse]:
        async for request in request_iterator:
            yield self._step(request)

    async def BatchStep(
        self, request: pb.BatchStepRequest, context: Context
    ) -> pb.BatchStepResponse:
        n = len(request.session_ids)
        times = list(request.times) or [1] * n
        lengths = [t * self._output_size for t in times]
        if request.values_f32:  # answered in kind, as the server does
            return pb.BatchStepResponse(
                request_id=request.request_id,
                output_lengths=lengths,
                outputs_f32=bytes(4 * sum(lengths)),
                positions=times,
            )
        return pb.BatchStepResponse(
            request_id=request.request_id,
            output_lengths=lengths,
            outputs=self._outputs(sum(lengths)),
            positions=times,
        )


class InlineReference(EchoInference):
    """Runs the model per stream step, inline on the loop (see the module doc)."""

    def __init__(self, model: LoadedModel) -> None:
        super().__init__(model.spec.input_size, model.spec.output_size)
        self._model = model
        self._states: dict[str, list[Any]] = {}  # session id -> states in model layout, B=1
        self._positions: dict[str, int] = {}

    async def CreateSession(
        self, request: pb.CreateSessionRequest, context: Context
    ) -> pb.SessionInfo:
        info = await super().CreateSession(request, context)
        self._states[info.session_id] = self._model.zero_states(1)
        self._positions[info.session_id] = 0
        return info

    async def StepStream(
        self, request_iterator: AsyncIterator[pb.StepRequest], context: Context
    ) -> AsyncIterator[pb.StepResponse]:
        f = self._input_size
        async for request in request_iterator:
            sid = request.session_id
            x = np.asarray(request.values, np.float32).reshape(1, -1, f)  # (1, T, F)
            y, self._states[sid] = self._model.run(x, self._states[sid])  # y (1, T, O)
            t = x.shape[1]
            self._positions[sid] += t
            yield pb.StepResponse(
                session_id=sid,
                request_id=request.request_id,
                time=t,
                output_size=self._output_size,
                outputs=y.ravel().tolist(),
                position=self._positions[sid],
            )


async def serve(address: str, servicer: EchoInference, max_message_bytes: int) -> None:
    server = grpc.aio.server(options=server_options(max_message_bytes))
    pb_grpc.add_InferenceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port(address)
    await server.start()
    host = address.rsplit(":", 1)[0]
    print(f"{READY_PREFIX}{host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seqserve.bench.echo", description=__doc__)
    parser.add_argument("--address", default="127.0.0.1:0")
    parser.add_argument("--input-size", type=int, default=1)
    parser.add_argument("--output-size", type=int, default=1)
    parser.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES)
    parser.add_argument("--repository", default=None, help="with --model: the inline reference")
    parser.add_argument("--model", default=None, help="model name in --repository")
    args = parser.parse_args(argv)
    if (args.model is None) != (args.repository is None):
        parser.error("--model and --repository go together")
    servicer: EchoInference
    if args.model is not None:
        from seqserve.core.runtime import ModelRegistry

        model = ModelRegistry.load(Path(args.repository)).get(args.model)
        servicer = InlineReference(model)
    else:
        servicer = EchoInference(args.input_size, args.output_size)
    asyncio.run(serve(args.address, servicer, args.max_message_bytes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
