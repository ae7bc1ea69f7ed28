"""The native StepStream's decoding: the values a client sent, exactly, at any request size."""

from __future__ import annotations

import numpy as np
import pytest

from seqserve.api import seqserve_pb2 as pb
from seqserve.grpc import streams


@pytest.mark.parametrize("n", [1, streams.FEW_VALUES, streams.FEW_VALUES + 1, 4096])
def test_values_arrive_as_sent_as_float32(n: int) -> None:
    sent = np.random.default_rng(n).normal(0, 1e3, n).astype(np.float32)
    request = pb.StepRequest(session_id="s", values=sent.tolist(), request_id=7, position=3)
    sid, values, position, tag = streams.decode(request)
    assert (sid, position, tag) == ("s", 3, 7)
    assert values.dtype == np.float32 and values.shape == (n,)
    np.testing.assert_array_equal(values, sent)  # bit for bit: float32 in, float32 out
    values[0] = 0.0  # the core keeps what it is handed: a fresh, writable array
    assert request.values[0] == sent[0]


def test_a_request_without_position_decodes_to_none() -> None:
    _, _, position, _ = streams.decode(pb.StepRequest(session_id="s", values=[1.0]))
    assert position is None
