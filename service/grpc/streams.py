"""The native StepStream: protobuf to typed steps, answers to protobuf, on the core's pipeline.

Ordering, the in-flight bound and in-band refusals are the core's step
pipeline (seqserve.core.pipeline); this module is the conversion at both ends.
A response is built in the stream's writer, outside the batcher's round.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable
from typing import Any

import grpc
import numpy as np

from seqserve.api import seqserve_pb2 as pb
from seqserve.core import errors
from seqserve.core.pipeline import Answer, Step, StepPipeline
from seqserve.core.work import StepResult
from seqserve.grpc.registration import Undecodable
from seqserve.grpc.status import to_status, to_status_pb

Context = grpc.aio.ServicerContext[Any, Any]

# Up to this many values, reading them one by one beats numpy's ~2 us of fixed cost
# for a repeated field; beyond it, the element loop costs more (measured: equal at ~48).
FEW_VALUES = 32


def decode(request: pb.StepRequest | Undecodable) -> Step[int]:
    """A StepRequest as the core takes it; the tag is the client's request_id."""
    if isinstance(request, Undecodable):
        raise errors.InvalidArgument(request.message)
    position = request.position if request.HasField("position") else None
    given = request.values
    if len(given) <= FEW_VALUES:
        values = np.fromiter(given, np.float32, len(given))  # (T * F,) a fresh array
    else:
        values = np.asarray(given, dtype=np.float32)
    return request.session_id, values, position, request.request_id


def step_response(session_id: str, request_id: int, result: StepResult) -> pb.StepResponse:
    """The answer to a step that was applied (the stream's and the unary call's)."""
    time, output_size = result.outputs.shape  # (T, O)
    return pb.StepResponse(
        session_id=session_id,
        request_id=request_id,
        time=time,
        output_size=output_size,
        outputs=result.outputs.ravel().tolist(),
        position=result.position,
    )


def encode(answer: Answer[int]) -> pb.StepResponse:
    if answer.result is not None:
        return step_response(answer.session_id, answer.tag, answer.result)
    assert answer.error is not None
    return pb.StepResponse(
        session_id=answer.session_id, request_id=answer.tag, error=to_status_pb(answer.error)
    )


async def serve_stream(
    pipeline: StepPipeline[int],
    requests: AsyncIterable[pb.StepRequest],
    context: Context,
    encoder: Callable[[Answer[int]], pb.StepResponse] = encode,
) -> None:
    """Run one StepStream call; a stream that ends early ends with its status."""
    failure = await pipeline.run(requests, decode, encoder, context.write)
    if failure is not None:
        code, message = to_status(failure)
        await context.abort(code, message)
