"""Client load over the KServe front end: one sequence per ModelStreamInfer stream,
ping-pong, as the native stream driver does on StepStream (seqserve.bench.drivers).

Requests are what tritonclient sends for a sequence model: input `x` FP32 [1, T, F]
in raw_input_contents, `sequence_id` as int64_param and START on the first.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING, Any

import grpc

from seqserve.api import inference_pb2 as kpb
from seqserve.api import inference_pb2_grpc as kpb_grpc

if TYPE_CHECKING:
    from seqserve.bench.drivers import LoadResult, StreamJob, _Recorder

EOF_: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # the stubs lack it


class KServeSequence:
    """One sequence on its own ModelStreamInfer stream."""

    def __init__(self, stub: Any, slot: int, sequence_id: int, job: StreamJob) -> None:
        self._call = stub.ModelStreamInfer()
        self._slot = slot
        self._job = job
        self._sent = 0
        features = job.values // job.steps
        request = kpb.ModelInferRequest(model_name=job.model)
        request.inputs.add(name="x", datatype="FP32", shape=[1, job.steps, features])
        request.raw_input_contents.append(b"\0\0\0?" * job.values)  # 0.5, little-endian
        request.parameters["sequence_id"].int64_param = sequence_id
        request.parameters["sequence_start"].bool_param = True
        request.parameters["sequence_end"].bool_param = False
        self._request = request

    async def _round_trip(self) -> Any:
        self._sent += 1  # no request id: tritonclient sends none unless asked to
        await self._call.write(self._request)
        if self._sent == 1:
            self._request.parameters["sequence_start"].bool_param = False
        return await self._call.read()

    async def open(self) -> None:
        response = await self._round_trip()  # START: the sequence exists before the window
        if response is EOF_ or response.error_message:
            raise RuntimeError(f"sequence did not start: {getattr(response, 'error_message', '')}")

    async def run(self, rec: _Recorder) -> None:
        expected = 4 * self._job.outputs
        try:
            while self._sent < self._job.max_messages:
                t0 = time.monotonic_ns()
                if t0 >= rec.end_ns:
                    break
                response = await self._round_trip()
                t1 = time.monotonic_ns()
                if response is EOF_:
                    rec.error(f"stream ended: {await self._call.code()}")
                    return
                if response.error_message:
                    rec.error(f"in-band error: {response.error_message}")
                elif len(response.infer_response.raw_output_contents[0]) != expected:
                    rec.error("wrong output size")
                else:
                    rec.done(self._slot, t0, t1, self._job.steps)
            # END: the sequence's session closes (one more step, outside the window).
            self._request.parameters["sequence_end"].bool_param = True
            await self._round_trip()
            await self._call.done_writing()
        except grpc.aio.AioRpcError as exc:
            rec.error(f"{exc.code()}: {exc.details()}")


async def run_kserve_stream(
    job: StreamJob, channel: grpc.aio.Channel, recorder: type[_Recorder], go: Any
) -> LoadResult:
    """Open `job.streams` sequences (ids unique to this process), then ping-pong until the
    window ends."""
    stub = kpb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
    base = os.getpid() * 1_000_000  # distinct from other client processes' sequences
    streams = [KServeSequence(stub, i, base + i + 1, job) for i in range(job.streams)]
    await asyncio.gather(*(s.open() for s in streams))
    start_ns = await go()
    warm_end = start_ns + int(job.warmup_s * 1e9)
    rec = recorder(warm_end, warm_end + int(job.window_s * 1e9), job.streams)
    await asyncio.gather(*(s.run(rec) for s in streams))
    return rec.result()
