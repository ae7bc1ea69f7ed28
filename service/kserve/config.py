"""ModelMetadata and ModelConfig of a served version, in the protocol's terms.

A model takes one FP32 input [batch, T, F] and gives one FP32 output
[batch, T, O]; requests carry one sequence each ([1, T, F]) and the server
batches steps across sequences up to --max-batch, so the config reports
max_batch_size = --max-batch with dims [-1, F] and [-1, O] (T is variable),
`sequence_batching` with the oldest strategy, the session TTL as
max_sequence_idle_microseconds, and the recurrent state the server keeps
between a sequence's requests as Triton's implicit state (zero initial data).
"""

from __future__ import annotations

from seqserve.api import inference_pb2 as kpb
from seqserve.core.settings import CoreSettings
from seqserve.core.versions import ModelVersion

EXTENSIONS = ("sequence",)  # what seqserve serves beyond the core protocol
PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
DATATYPE = "FP32"


def metadata(v: ModelVersion, versions: list[str]) -> kpb.ModelMetadataResponse:
    spec = v.spec
    tensor = kpb.ModelMetadataResponse.TensorMetadata
    return kpb.ModelMetadataResponse(
        name=v.model.name,
        versions=versions,
        platform=PLATFORM,
        inputs=[tensor(name=spec.input_name, datatype=DATATYPE, shape=[-1, -1, spec.input_size])],
        outputs=[
            tensor(name=spec.output_name, datatype=DATATYPE, shape=[-1, -1, spec.output_size])
        ],
    )


def model_config(v: ModelVersion, settings: CoreSettings) -> kpb.ModelConfig:
    spec = v.spec
    fp32 = kpb.TYPE_FP32
    states = []
    for s in spec.states:
        dims = list(s.per_session_shape())  # without the batch axis, as Triton writes dims
        zero = kpb.ModelSequenceBatching.InitialState(
            data_type=fp32, dims=dims, zero_data=True, name="zero"
        )
        states.append(
            kpb.ModelSequenceBatching.State(
                input_name=s.input, output_name=s.output, data_type=fp32, dims=dims,
                initial_state=[zero],
            )
        )  # fmt: skip
    batching = kpb.ModelSequenceBatching(
        max_sequence_idle_microseconds=int(settings.session_ttl_s * 1e6),
        oldest=kpb.ModelSequenceBatching.StrategyOldest(
            max_candidate_sequences=settings.max_sessions,
            max_queue_delay_microseconds=settings.batch_delay_us,
            preserve_ordering=True,
        ),
        state=states,
    )
    return kpb.ModelConfig(
        name=v.model.name,
        platform=PLATFORM,
        backend=BACKEND,
        max_batch_size=settings.max_batch,
        input=[kpb.ModelInput(name=spec.input_name, data_type=fp32, dims=[-1, spec.input_size])],
        output=[
            kpb.ModelOutput(name=spec.output_name, data_type=fp32, dims=[-1, spec.output_size])
        ],
        sequence_batching=batching,
        instance_group=[kpb.ModelInstanceGroup(kind=kpb.ModelInstanceGroup.KIND_CPU, count=1)],
    )
