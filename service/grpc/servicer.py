"""The seqserve.v1.Inference servicer: protobuf in, typed core calls, protobuf out.

Nothing here holds sessions or state; the SessionManager does. Each handler
turns a request into numpy arrays and plain values, calls the core, and turns
the result (or the exception, through seqserve.grpc.status) into a response.
What only this protocol knows stays in the front end: the encoded size of a
batch's answer (seqserve.grpc.batches), checked against the message limit
before the batch is applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterable, Callable

import grpc
import numpy as np

from seqserve.api import seqserve_pb2 as pb
from seqserve.api import seqserve_pb2_grpc as pb_grpc
from seqserve.core import errors
from seqserve.core.batchplan import BatchPlan
from seqserve.core.pipeline import Answer, StepPipeline
from seqserve.core.sessions import SessionInfo, SessionManager
from seqserve.grpc import batches, sessionstate
from seqserve.grpc.auth import Unauthenticated
from seqserve.grpc.calls import Calls, Context, unary
from seqserve.grpc.status import to_status
from seqserve.grpc.streams import encode, serve_stream, step_response

# Steps of one stream that may be read but not yet answered. When reached the
# servicer stops reading, so HTTP/2 flow control pushes back on the client.
STREAM_MAX_IN_FLIGHT = 256
REFUSAL_READ_S = 1.0  # how long a refused stream may take to send its first request


class _StreamSeen:
    """What the access log says of a stream: its first session and the messages answered."""

    def __init__(self) -> None:
        self.session = ""
        self.messages = 0

    def counting(
        self, encode: Callable[[Answer[int]], pb.StepResponse]
    ) -> Callable[[Answer[int]], pb.StepResponse]:
        def counted(answer: Answer[int]) -> pb.StepResponse:
            self.messages += 1
            if not self.session:
                self.session = answer.session_id
            return encode(answer)

        return counted


def _session_pb(info: SessionInfo) -> pb.SessionInfo:
    return pb.SessionInfo(
        session_id=info.session_id,
        model=info.model,
        version=info.version,
        position=info.position,
        idle_seconds=info.idle_seconds,
        ttl_seconds=info.ttl_seconds,
    )


class InferenceServicer(pb_grpc.InferenceServicer):
    def __init__(
        self,
        sessions: SessionManager,
        calls: Calls,
        *,
        max_message_bytes: int,
        max_streams: int,
    ) -> None:
        self._sessions = sessions
        self.calls = calls
        self._max_streams = max_streams
        self._max_steps_per_request = sessions.settings.max_steps_per_request
        self._max_message_bytes = max_message_bytes
        # Every open StepStream; shutdown closes each.
        self._streams: set[StepPipeline[int]] = set()

    # -- discovery -------------------------------------------------------------------------------

    @unary
    async def ListModels(
        self, request: pb.ListModelsRequest, principal: str
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            models=[
                pb.ModelVersions(name=m.name, versions=list(m.versions), latest=m.latest)
                for m in self._sessions.models()
            ]
        )

    @unary
    async def GetModel(self, request: pb.GetModelRequest, principal: str) -> pb.ModelInfo:
        model = self._sessions.model(request.name, request.version or None)
        spec = model.spec
        return pb.ModelInfo(
            name=model.name,
            version=model.version,
            cell=spec.cell,
            input_size=spec.input_size,
            output_size=spec.output_size,
            hidden_size=spec.hidden_size,
            num_layers=spec.num_layers,
            states=[
                pb.StateInfo(
                    input_name=s.input,
                    output_name=s.output,
                    shape=list(s.shape),
                    batch_axis=s.batch_axis,
                )
                for s in spec.states
            ],
            parameters=spec.parameters,
            macs_per_step=spec.macs_per_step,
            autoregressive=spec.autoregressive,
            max_steps_per_request=self._max_steps_per_request,
            spec_json=json.dumps(spec.to_dict(), sort_keys=True),
        )

    # -- session lifecycle -----------------------------------------------------------------------

    @unary
    async def CreateSession(
        self, request: pb.CreateSessionRequest, principal: str
    ) -> pb.SessionInfo:
        info = await self._sessions.create_session(  # answered once the store holds it
            request.model, request.version or None, request.session_id or None, principal
        )
        return _session_pb(info)

    @unary
    async def GetSession(self, request: pb.GetSessionRequest, principal: str) -> pb.SessionInfo:
        return _session_pb(await self._sessions.session_info(request.session_id, principal))

    @unary
    async def ResetSession(self, request: pb.ResetSessionRequest, principal: str) -> pb.SessionInfo:
        return _session_pb(await self._sessions.reset_session(request.session_id, principal))

    @unary
    async def CloseSession(
        self, request: pb.CloseSessionRequest, principal: str
    ) -> pb.CloseSessionResponse:
        info = await self._sessions.close_session(request.session_id, principal)
        return pb.CloseSessionResponse(session_id=info.session_id, position=info.position)

    # -- steps -----------------------------------------------------------------------------------

    @unary
    async def Step(self, request: pb.StepRequest, principal: str) -> pb.StepResponse:
        values = np.asarray(request.values, dtype=np.float32)  # (T * F,)
        position = request.position if request.HasField("position") else None
        result = await self._sessions.step(request.session_id, values, principal, position)
        return step_response(request.session_id, request.request_id, result)

    async def StepStream(
        self, request_iterator: AsyncIterable[pb.StepRequest], context: Context
    ) -> None:
        """Pipelined: requests are read and handed to the core while earlier ones run.

        See seqserve.core.pipeline: answers of a session keep its order, failures
        are answered in band, and at most STREAM_MAX_IN_FLIGHT steps are read ahead.
        """
        self.calls.started()
        started = time.perf_counter()
        seen = _StreamSeen()
        code_name = "OK"
        principal = "-"
        try:
            try:
                principal = self.calls.principal_of(context)
            except Unauthenticated as exc:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
            if len(self._streams) >= self._max_streams:
                # Read the first request before refusing: a refusal that overtakes the
                # client's first message reached grpc's Python client as INTERNAL.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(anext(aiter(request_iterator)), REFUSAL_READ_S)
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"too many open streams: {len(self._streams)} open, "
                    f"max_streams={self._max_streams}; close idle ones, or send the steps "
                    "of many sessions on one stream or in BatchStep",
                )
            pipeline: StepPipeline[int] = StepPipeline(
                self._sessions, principal, STREAM_MAX_IN_FLIGHT
            )
            self._streams.add(pipeline)
            try:
                await serve_stream(
                    pipeline, request_iterator, context, seen.counting(self._counted)
                )
            finally:
                self._streams.discard(pipeline)
        except asyncio.CancelledError:
            code_name = "CANCELLED"  # the client went away
            raise
        except BaseException:
            code = context.code()
            code_name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
            raise
        finally:
            self.calls.finished("StepStream", code_name, principal, seen.session, started,
                                seen.messages)  # fmt: skip

    def _counted(self, answer: Answer[int]) -> pb.StepResponse:
        """A stream's answer, counted by its outcome as it is encoded."""
        code = "OK" if answer.error is None else to_status(answer.error)[0].name
        self.calls.requests[("StepStream", code)] += 1
        return encode(answer)

    def close_streams(self) -> None:
        """Shutdown: end every open StepStream once its in-flight steps are answered."""
        for pipeline in self._streams:
            pipeline.close(errors.Unavailable("server shutting down"))

    @unary
    async def BatchStep(self, request: pb.BatchStepRequest, principal: str) -> pb.BatchStepResponse:
        raw = bool(request.values_f32)
        values = batches.values_of(request)  # (sum T_i * F,) the items' steps, concatenated
        times = list(request.times) if request.times else None
        positions = list(request.positions) if request.positions else None
        result = await self._sessions.step_batch(
            list(request.session_ids), times, values, principal, self._admit_batch, positions
        )
        return batches.encode(request.request_id, result, self._max_message_bytes, raw=raw)

    def _admit_batch(self, plan: BatchPlan) -> None:
        """Refuse a batch whose answer could outgrow the message limit, before it is applied."""
        limit = self._max_message_bytes
        if (size := batches.answer_bound(plan)) > limit:
            raise errors.ResourceExhausted(
                f"the answer to this batch of {plan.n} sessions could take {size} bytes, "
                f"over the {limit}-byte message limit; expected a smaller batch "
                "(or a larger --max-message-bytes); no step was applied"
            )

    @unary
    async def Forecast(self, request: pb.ForecastRequest, principal: str) -> pb.ForecastResponse:
        result = await self._sessions.forecast(request.session_id, request.horizon, principal)
        horizon, output_size = result.outputs.shape  # (horizon, O)
        return pb.ForecastResponse(
            session_id=request.session_id,
            horizon=horizon,
            output_size=output_size,
            outputs=result.outputs.ravel().tolist(),
            position=result.position,
        )

    # -- moving sessions -------------------------------------------------------------------------

    @unary
    async def ExportSession(
        self, request: pb.ExportSessionRequest, principal: str
    ) -> pb.SessionState:
        return sessionstate.to_pb(await self._sessions.export(request.session_id, principal))

    @unary
    async def ImportSession(
        self, request: pb.ImportSessionRequest, principal: str
    ) -> pb.SessionInfo:
        state = sessionstate.from_pb(request.state)
        info = await self._sessions.import_state(state, principal, request.session_id or None)
        return _session_pb(info)
