from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReloadModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelVersionChange(_message.Message):
    __slots__ = ("name", "version", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ReloadModelsResponse(_message.Message):
    __slots__ = ("added", "removed", "refused")
    ADDED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    added: _containers.RepeatedCompositeFieldContainer[ModelVersionChange]
    removed: _containers.RepeatedCompositeFieldContainer[ModelVersionChange]
    refused: _containers.RepeatedCompositeFieldContainer[ModelVersionChange]
    def __init__(self, added: _Optional[_Iterable[_Union[ModelVersionChange, _Mapping]]] = ..., removed: _Optional[_Iterable[_Union[ModelVersionChange, _Mapping]]] = ..., refused: _Optional[_Iterable[_Union[ModelVersionChange, _Mapping]]] = ...) -> None: ...

class Status(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelVersions(_message.Message):
    __slots__ = ("name", "versions", "latest")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    LATEST_FIELD_NUMBER: _ClassVar[int]
    name: str
    versions: _containers.RepeatedScalarFieldContainer[str]
    latest: str
    def __init__(self, name: _Optional[str] = ..., versions: _Optional[_Iterable[str]] = ..., latest: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelVersions]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelVersions, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class StateInfo(_message.Message):
    __slots__ = ("input_name", "output_name", "shape", "batch_axis")
    INPUT_NAME_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    BATCH_AXIS_FIELD_NUMBER: _ClassVar[int]
    input_name: str
    output_name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    batch_axis: int
    def __init__(self, input_name: _Optional[str] = ..., output_name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., batch_axis: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "cell", "input_size", "output_size", "hidden_size", "num_layers", "states", "parameters", "macs_per_step", "autoregressive", "max_steps_per_request", "spec_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CELL_FIELD_NUMBER: _ClassVar[int]
    INPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    MACS_PER_STEP_FIELD_NUMBER: _ClassVar[int]
    AUTOREGRESSIVE_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    cell: str
    input_size: int
    output_size: int
    hidden_size: int
    num_layers: int
    states: _containers.RepeatedCompositeFieldContainer[StateInfo]
    parameters: int
    macs_per_step: int
    autoregressive: bool
    max_steps_per_request: int
    spec_json: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., cell: _Optional[str] = ..., input_size: _Optional[int] = ..., output_size: _Optional[int] = ..., hidden_size: _Optional[int] = ..., num_layers: _Optional[int] = ..., states: _Optional[_Iterable[_Union[StateInfo, _Mapping]]] = ..., parameters: _Optional[int] = ..., macs_per_step: _Optional[int] = ..., autoregressive: _Optional[bool] = ..., max_steps_per_request: _Optional[int] = ..., spec_json: _Optional[str] = ...) -> None: ...

class CreateSessionRequest(_message.Message):
    __slots__ = ("model", "version", "session_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    session_id: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., session_id: _Optional[str] = ...) -> None: ...

class SessionInfo(_message.Message):
    __slots__ = ("session_id", "model", "version", "position", "idle_seconds", "ttl_seconds")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    IDLE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    model: str
    version: str
    position: int
    idle_seconds: float
    ttl_seconds: float
    def __init__(self, session_id: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., position: _Optional[int] = ..., idle_seconds: _Optional[float] = ..., ttl_seconds: _Optional[float] = ...) -> None: ...

class GetSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class ResetSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CloseSessionResponse(_message.Message):
    __slots__ = ("session_id", "position")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    position: int
    def __init__(self, session_id: _Optional[str] = ..., position: _Optional[int] = ...) -> None: ...

class StepRequest(_message.Message):
    __slots__ = ("session_id", "values", "request_id", "position")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    values: _containers.RepeatedScalarFieldContainer[float]
    request_id: int
    position: int
    def __init__(self, session_id: _Optional[str] = ..., values: _Optional[_Iterable[float]] = ..., request_id: _Optional[int] = ..., position: _Optional[int] = ...) -> None: ...

class StepResponse(_message.Message):
    __slots__ = ("session_id", "request_id", "time", "output_size", "outputs", "position", "error")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    request_id: int
    time: int
    output_size: int
    outputs: _containers.RepeatedScalarFieldContainer[float]
    position: int
    error: Status
    def __init__(self, session_id: _Optional[str] = ..., request_id: _Optional[int] = ..., time: _Optional[int] = ..., output_size: _Optional[int] = ..., outputs: _Optional[_Iterable[float]] = ..., position: _Optional[int] = ..., error: _Optional[_Union[Status, _Mapping]] = ...) -> None: ...

class BatchStepRequest(_message.Message):
    __slots__ = ("session_ids", "times", "values", "request_id", "positions", "values_f32")
    SESSION_IDS_FIELD_NUMBER: _ClassVar[int]
    TIMES_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    VALUES_F32_FIELD_NUMBER: _ClassVar[int]
    session_ids: _containers.RepeatedScalarFieldContainer[str]
    times: _containers.RepeatedScalarFieldContainer[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    request_id: int
    positions: _containers.RepeatedScalarFieldContainer[int]
    values_f32: bytes
    def __init__(self, session_ids: _Optional[_Iterable[str]] = ..., times: _Optional[_Iterable[int]] = ..., values: _Optional[_Iterable[float]] = ..., request_id: _Optional[int] = ..., positions: _Optional[_Iterable[int]] = ..., values_f32: _Optional[bytes] = ...) -> None: ...

class BatchStepResponse(_message.Message):
    __slots__ = ("request_id", "output_lengths", "outputs", "positions", "errors", "outputs_f32")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_LENGTHS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_F32_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    output_lengths: _containers.RepeatedScalarFieldContainer[int]
    outputs: _containers.RepeatedScalarFieldContainer[float]
    positions: _containers.RepeatedScalarFieldContainer[int]
    errors: _containers.RepeatedCompositeFieldContainer[ItemError]
    outputs_f32: bytes
    def __init__(self, request_id: _Optional[int] = ..., output_lengths: _Optional[_Iterable[int]] = ..., outputs: _Optional[_Iterable[float]] = ..., positions: _Optional[_Iterable[int]] = ..., errors: _Optional[_Iterable[_Union[ItemError, _Mapping]]] = ..., outputs_f32: _Optional[bytes] = ...) -> None: ...

class ItemError(_message.Message):
    __slots__ = ("index", "status")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    index: int
    status: Status
    def __init__(self, index: _Optional[int] = ..., status: _Optional[_Union[Status, _Mapping]] = ...) -> None: ...

class ForecastRequest(_message.Message):
    __slots__ = ("session_id", "horizon")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HORIZON_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    horizon: int
    def __init__(self, session_id: _Optional[str] = ..., horizon: _Optional[int] = ...) -> None: ...

class ForecastResponse(_message.Message):
    __slots__ = ("session_id", "horizon", "output_size", "outputs", "position")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HORIZON_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    horizon: int
    output_size: int
    outputs: _containers.RepeatedScalarFieldContainer[float]
    position: int
    def __init__(self, session_id: _Optional[str] = ..., horizon: _Optional[int] = ..., output_size: _Optional[int] = ..., outputs: _Optional[_Iterable[float]] = ..., position: _Optional[int] = ...) -> None: ...

class ExportSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class ImportSessionRequest(_message.Message):
    __slots__ = ("state", "session_id")
    STATE_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    state: SessionState
    session_id: str
    def __init__(self, state: _Optional[_Union[SessionState, _Mapping]] = ..., session_id: _Optional[str] = ...) -> None: ...

class SessionState(_message.Message):
    __slots__ = ("format", "session_id", "model", "version", "position", "states", "last_output", "answers", "last_access", "checksum")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    LAST_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    LAST_ACCESS_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    format: str
    session_id: str
    model: str
    version: str
    position: int
    states: _containers.RepeatedCompositeFieldContainer[Tensor]
    last_output: Tensor
    answers: RetainedAnswers
    last_access: float
    checksum: bytes
    def __init__(self, format: _Optional[str] = ..., session_id: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., position: _Optional[int] = ..., states: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., last_output: _Optional[_Union[Tensor, _Mapping]] = ..., answers: _Optional[_Union[RetainedAnswers, _Mapping]] = ..., last_access: _Optional[float] = ..., checksum: _Optional[bytes] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("name", "shape", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class RetainedAnswers(_message.Message):
    __slots__ = ("count", "starts", "digests", "outputs", "long")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    STARTS_FIELD_NUMBER: _ClassVar[int]
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    LONG_FIELD_NUMBER: _ClassVar[int]
    count: int
    starts: _containers.RepeatedScalarFieldContainer[int]
    digests: _containers.RepeatedScalarFieldContainer[int]
    outputs: Tensor
    long: _containers.RepeatedCompositeFieldContainer[LongAnswer]
    def __init__(self, count: _Optional[int] = ..., starts: _Optional[_Iterable[int]] = ..., digests: _Optional[_Iterable[int]] = ..., outputs: _Optional[_Union[Tensor, _Mapping]] = ..., long: _Optional[_Iterable[_Union[LongAnswer, _Mapping]]] = ...) -> None: ...

class LongAnswer(_message.Message):
    __slots__ = ("ring", "outputs")
    RING_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    ring: int
    outputs: Tensor
    def __init__(self, ring: _Optional[int] = ..., outputs: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...
