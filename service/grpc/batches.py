"""BatchStep's answer on the wire: its size bound before a batch is applied, and its encoding.

A batch whose answer could not be sent must be refused before any of its
steps is applied, so the bound is taken from the validated plan. Failures
are rare and their status codes small, so the bound counts every item at
the larger of its outputs and a failure reported by its code alone; the
answer then carries each failure's message while it fits under the limit,
and the code alone for the rest (the first failures keep their messages).
"""

from __future__ import annotations

import numpy as np

from seqserve.api import seqserve_pb2 as pb
from seqserve.core import errors
from seqserve.core.batchplan import F32, BatchPlan, BatchResult
from seqserve.grpc.status import to_status_pb

ANSWER_BYTES = 64  # request_id and the tags and lengths of the packed columns
ITEM_BYTES = 16  # one output_lengths varint (<= 5 bytes) and one positions varint (<= 10)
# An ItemError with its code and no message: two tags and a length around the
# index (<= 5 bytes), then the Status's tag, length, code tag and code.
BARE_ERROR_BYTES = 16
# A message's tag and length (< 16 KiB), and a byte more in each of the two lengths around it.
MESSAGE_FRAMING_BYTES = 5


def answer_bound(plan: BatchPlan) -> int:
    """The most bytes the answer to `plan` can take, messages dropped as `encode` drops them."""
    floats = plan.output_values() * 4  # (n,) output bytes of each item if it succeeds
    return ANSWER_BYTES + ITEM_BYTES * plan.n + int(np.maximum(floats, BARE_ERROR_BYTES).sum())


def values_of(request: pb.BatchStepRequest) -> F32:
    """The request's values (sum T_i * F,), from `values` or from `values_f32`'s bytes."""
    raw = request.values_f32
    if not raw:
        return np.asarray(request.values, dtype=np.float32)
    if len(request.values):
        raise errors.InvalidArgument(
            f"expected the values in one of values ({len(request.values)} given) and "
            f"values_f32 ({len(raw)} bytes given), not both"
        )
    if len(raw) % 4:
        raise errors.InvalidArgument(
            f"expected values_f32 to hold whole float32 values (a multiple of 4 bytes), "
            f"got {len(raw)} bytes"
        )
    return np.frombuffer(raw, dtype="<f4")  # read-only: the core copies what it keeps


def encode(
    request_id: int, result: BatchResult, limit: int, *, raw: bool = False
) -> pb.BatchStepResponse:
    """The answer, with each failure's message while the answer stays within `limit` bytes.

    `raw`: the outputs as little-endian float32 bytes (outputs_f32), as the request sent
    its values.
    """
    statuses = [(index, to_status_pb(exc)) for index, exc in result.errors]
    messages = [status.message for _, status in statuses]
    for _, status in statuses:
        status.message = ""
    outputs = result.outputs.ravel()  # (sum output_lengths,)
    response = pb.BatchStepResponse(
        request_id=request_id,
        output_lengths=result.output_lengths,
        positions=result.positions,
        errors=[pb.ItemError(index=index, status=status) for index, status in statuses],
    )
    if raw:
        response.outputs_f32 = outputs.astype("<f4", copy=False).tobytes()
    else:
        response.outputs.extend(outputs.tolist())
    room = limit - response.ByteSize()
    for error, message in zip(response.errors, messages, strict=True):
        cost = len(message.encode()) + MESSAGE_FRAMING_BYTES
        if cost > room:
            break
        error.status.message = message
        room -= cost
    return response
