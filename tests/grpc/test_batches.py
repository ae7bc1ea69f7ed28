"""BatchStep's answer: the bound known before a batch is applied holds for what is sent."""

from __future__ import annotations

import numpy as np
import pytest

from seqserve.core.batchplan import BatchResult
from seqserve.core.errors import FailedPrecondition, Internal, NotFound
from seqserve.grpc import batches
from seqserve.grpc.status import STATUS_CODES, status_number

CODES = {cls: status_number(code) for cls, code in STATUS_CODES.items()}


def result_with(n: int, failed: dict[int, Exception], output_size: int = 1) -> BatchResult:
    """n items of T = 1; the `failed` ones fail with their error."""
    lengths = [0 if i in failed else output_size for i in range(n)]
    return BatchResult(
        output_lengths=lengths,
        outputs=np.arange(sum(lengths), dtype=np.float32),
        positions=[0 if i in failed else 7 for i in range(n)],
        errors=sorted(failed.items()),  # type: ignore[arg-type]
    )


def long_reset(i: int) -> FailedPrecondition:
    return FailedPrecondition(
        f"session {'s' * 120}-{i!r} was reset while this step was running; the step was not applied"
    )


def test_an_answer_that_fits_keeps_every_message() -> None:
    failed = {3: NotFound("unknown session 'x'"), 5: long_reset(5)}
    response = batches.encode(9, result_with(10, failed), limit=1 << 20)
    assert response.request_id == 9
    assert [(e.index, e.status.code, e.status.message) for e in response.errors] == [
        (3, CODES[NotFound], "unknown session 'x'"),
        (5, CODES[FailedPrecondition], str(failed[5])),
    ]
    assert list(response.output_lengths) == [1, 1, 1, 0, 1, 0, 1, 1, 1, 1]


@pytest.mark.parametrize("late_failures", [0, 10, 2_000, 20_000])
def test_the_bound_holds_whatever_fails_late(late_failures: int) -> None:
    """The bound of 20,000 T=1 items is what any mix of late failures may need, and the
    answer sent stays within it: messages go, in order, once they no longer fit."""
    n = 20_000
    rng = np.random.default_rng(late_failures)
    late = rng.choice(n, late_failures, replace=False).tolist()
    failed: dict[int, Exception] = {i: long_reset(i) for i in late}
    bound = (
        batches.ANSWER_BYTES
        + n * batches.ITEM_BYTES
        + n * max(4, batches.BARE_ERROR_BYTES)  # every item: its output or a bare failure
    )
    response = batches.encode(1, result_with(n, failed), limit=bound)
    assert response.ByteSize() <= bound
    assert sorted(e.index for e in response.errors) == sorted(late)
    assert all(e.status.code == CODES[FailedPrecondition] for e in response.errors)
    kept = [e.status.message for e in response.errors if e.status.message]
    # The first failures keep their messages; once one is dropped, all later ones are.
    assert kept == [str(failed[e.index]) for e in response.errors[: len(kept)]]
    if late_failures <= 10:
        assert len(kept) == late_failures


def test_a_failed_model_call_reports_its_request_id_to_the_items_that_fit() -> None:
    err = Internal("model m/1: the model call failed (RuntimeError; request id 0123456789ab)")
    failed: dict[int, Exception] = dict.fromkeys(range(100), err)
    response = batches.encode(1, result_with(100, failed), limit=2_500)
    assert response.ByteSize() <= 2_500
    messages = [e.status.message for e in response.errors]
    assert messages[0] == str(err) and messages[-1] == ""
    assert {e.status.code for e in response.errors} == {CODES[Internal]}
