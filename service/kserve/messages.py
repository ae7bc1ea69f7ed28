"""KServe v2 messages to the core's terms and back: sequences, input tensors, outputs.

A request names a model (and optionally a version), carries one input tensor
(the model's input, FP32, shape [1, T, F] as Triton's sequence models take it
with max_batch_size > 0, or [T, F]) in `raw_input_contents` or
`contents.fp32_contents`, and may ask for outputs by name. Its parameters
`sequence_id`, `sequence_start` and `sequence_end` say which sequence it
belongs to. Every refusal says what was expected and what arrived.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from seqserve.api import inference_pb2 as kpb
from seqserve.core.errors import InvalidArgument
from seqserve.core.spec import ModelSpec
from seqserve.core.validation import MAX_ID_LENGTH
from seqserve.core.work import F32

DATATYPE = "FP32"
UINT64 = (1 << 64) - 1


class Sequence(NamedTuple):
    """A request's sequence parameters; `id` is "" when it names none (0 or "")."""

    id: str
    start: bool
    end: bool
    given: bool  # any sequence parameter at all: without one, the request is stateless


NO_SEQUENCE = Sequence("", False, False, False)


def sequence_of(request: kpb.ModelInferRequest) -> Sequence:
    get = request.parameters.get  # one lookup per parameter: this runs for every step
    p, start_p, end_p = get("sequence_id"), get("sequence_start"), get("sequence_end")
    if p is None and start_p is None and end_p is None:
        return NO_SEQUENCE
    sequence_id = ""
    if p is not None:
        kind = p.WhichOneof("parameter_choice")
        if kind == "int64_param":
            number = p.int64_param & UINT64  # an int64 on the wire, a uint64 to Triton
            sequence_id = str(number) if number else ""
        elif kind == "uint64_param":
            sequence_id = str(p.uint64_param) if p.uint64_param else ""
        elif kind == "string_param":
            sequence_id = p.string_param
        elif kind is not None:
            raise InvalidArgument(
                f"expected sequence_id as int64_param, uint64_param or string_param, got {kind}"
            )
    start, end = _flag(start_p, "sequence_start"), _flag(end_p, "sequence_end")
    return Sequence(sequence_id, start, end, True)


def _flag(p: kpb.InferParameter | None, name: str) -> bool:
    if p is None:
        return False
    if p.bool_param:
        return True
    kind = p.WhichOneof("parameter_choice")  # False, unset, or another type: which?
    if kind not in ("bool_param", None):
        raise InvalidArgument(f"expected {name} as bool_param, got {kind}")
    return False


def session_id(principal: str, model: str, sequence: Sequence) -> str:
    """The native session a sequence is: `oip/<principal>/<model>/<sequence id>`.

    The principal is part of it because session ids are one namespace and
    sequence ids are small numbers every client picks: two callers' sequence 1
    must be two sessions.
    """
    sid = f"oip/{principal}/{model}/{sequence.id}"
    if len(sid) > MAX_ID_LENGTH or not sid.isprintable():
        raise InvalidArgument(
            f"expected a sequence id of printable characters making a session id of at most "
            f"{MAX_ID_LENGTH} characters ({sid[:40]!r}...), got {len(sid)} characters"
        )
    return sid


class Inputs(NamedTuple):
    """A request's input: T steps (T * F,) float32, and whether it came as [1, T, F]."""

    values: F32
    batched: bool


F4 = np.dtype("<f4")


def inputs_of(request: kpb.ModelInferRequest, model: str, spec: ModelSpec) -> Inputs:
    """The one input tensor, checked against the model's input name, datatype and size."""
    # The request every tritonclient stream sends, accepted in one test (this runs for every
    # step); anything else takes the checks below, which say what is wrong.
    inputs, raw = request.inputs, request.raw_input_contents
    if len(inputs) == 1 and len(raw) == 1:
        tensor = inputs[0]
        shape = tensor.shape
        if (
            len(shape) == 3
            and shape[0] == 1
            and shape[1] >= 1
            and shape[2] == spec.input_size
            and len(raw[0]) == 4 * shape[1] * shape[2]
            and tensor.datatype == DATATYPE
            and tensor.name == spec.input_name
            and not tensor.HasField("contents")
        ):
            return Inputs(np.frombuffer(raw[0], dtype=F4), True)  # (T * F,) read-only view
    return _checked_inputs(request, model, spec)


def _checked_inputs(request: kpb.ModelInferRequest, model: str, spec: ModelSpec) -> Inputs:
    name, size = spec.input_name, spec.input_size
    if len(request.inputs) != 1:
        raise InvalidArgument(
            f"expected 1 input ({name!r}) for model {model!r}, got {len(request.inputs)}"
        )
    tensor = request.inputs[0]
    if tensor.name != name:
        raise InvalidArgument(
            f"unexpected inference input {tensor.name!r} for model {model!r}; expected {name!r}"
        )
    if tensor.datatype != DATATYPE:
        raise InvalidArgument(
            f"expected datatype {DATATYPE} for input {name!r}, got {tensor.datatype!r}"
        )
    shape = list(tensor.shape)
    batched = len(shape) == 3
    ok = (batched and shape[0] == 1) or len(shape) == 2
    if not ok or shape[-1] != size or shape[-2] < 1:
        raise InvalidArgument(
            f"expected shape [1, T, {size}] or [T, {size}] with T >= 1 for input {name!r}, "
            f"got {shape}"
        )
    count = shape[-2] * size  # T * F
    raw = request.raw_input_contents
    if raw:
        if len(raw) != 1:
            raise InvalidArgument(f"expected 1 raw_input_contents entry, got {len(raw)}")
        if tensor.HasField("contents"):
            raise InvalidArgument(
                f"expected the data of input {name!r} in raw_input_contents or contents, got both"
            )
        if len(raw[0]) != 4 * count:
            raise InvalidArgument(
                f"expected {4 * count} bytes ({count} FP32 values of shape {shape}) for input "
                f"{name!r}, got {len(raw[0])}"
            )
        # (T * F,) a read-only view of the request's bytes, kept alive by the array: the
        # core only reads a step's values.
        values: F32 = np.frombuffer(raw[0], dtype=F4)
        return Inputs(values, batched)
    if not tensor.HasField("contents"):
        raise InvalidArgument(
            f"expected the data of input {name!r} in raw_input_contents or "
            "contents.fp32_contents, got neither"
        )
    contents = tensor.contents
    if len(contents.fp32_contents) != count:
        others = [f.name for f, _ in contents.ListFields() if f.name != "fp32_contents"]
        where = f" (got {', '.join(others)} instead)" if others else ""
        raise InvalidArgument(
            f"expected {count} values in contents.fp32_contents for input {name!r} of shape "
            f"{shape}, got {len(contents.fp32_contents)}{where}"
        )
    return Inputs(np.asarray(contents.fp32_contents, dtype=np.float32), batched)


def check_outputs(request: kpb.ModelInferRequest, model: str, spec: ModelSpec) -> None:
    """Requested outputs must be the model's: checked before anything is applied."""
    for wanted in request.outputs:
        if wanted.name != spec.output_name:
            raise InvalidArgument(
                f"unexpected inference output {wanted.name!r} for model {model!r}; expected "
                f"{spec.output_name!r}"
            )


def infer_response(
    request_id: str,
    model: str,
    version: str,
    spec: ModelSpec,
    outputs: F32,
    batched: bool,
    into: kpb.ModelInferResponse | None = None,
) -> kpb.ModelInferResponse:
    """outputs (T, O) as the model's one output tensor, raw FP32 with datatype and shape;
    written into `into` when given (a stream's answer: no copy of a finished message)."""
    time, size = outputs.shape  # (T, O)
    response = kpb.ModelInferResponse() if into is None else into
    response.model_name, response.model_version, response.id = model, version, request_id
    response.outputs.append(_tensor(spec.output_name, time, size, batched))
    response.raw_output_contents.append(outputs.astype("<f4", copy=False).tobytes())
    return response


@functools.lru_cache(maxsize=1024)
def _tensor(
    name: str, time: int, size: int, batched: bool
) -> kpb.ModelInferResponse.InferOutputTensor:
    """The output tensor's metadata, built once per shape: a stream's answers repeat it
    (appending copies it into the response)."""
    shape = [1, time, size] if batched else [time, size]
    return kpb.ModelInferResponse.InferOutputTensor(name=name, datatype=DATATYPE, shape=shape)
