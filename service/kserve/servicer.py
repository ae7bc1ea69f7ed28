"""inference.GRPCInferenceService over the serving core: the KServe v2 front end.

Sequences are sessions. A request's `sequence_id` names the session
`oip/<principal>/<model>/<id>` (seqserve.kserve.messages.session_id), so a
sequence is durable, shared by replicas, exportable and visible to the native
API like any session, and owned by the principal that started it.

- START creates the session on the requested version (a live one under that id
  is closed first: the old sequence ends, as in Triton); END applies the step
  and then closes it. A request without START for a sequence that is not open
  (never started, ended, or idle past the TTL, Triton's
  max_sequence_idle_microseconds) is refused in Triton's words.
- A request with no sequence parameters runs the model from the zero state
  and keeps nothing.
- ModelStreamInfer runs on the core's step pipeline (seqserve.core.pipeline):
  the answers of a sequence keep its order, sequences interleave, and every
  failure is answered in band (`error_message`), the stream staying open, as
  tritonclient needs: a status would end its stream for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterable, Coroutine
from dataclasses import dataclass
from typing import Any

import grpc

from seqserve import __version__
from seqserve.api import inference_pb2 as kpb
from seqserve.api import inference_pb2_grpc as kpb_grpc
from seqserve.core.errors import InvalidArgument, NotFound, SeqServeError
from seqserve.core.pipeline import Answer, Answered, Step, StepPipeline
from seqserve.core.sessions import SessionManager
from seqserve.core.spec import ModelSpec
from seqserve.core.versions import ModelVersion
from seqserve.grpc.auth import Unauthenticated
from seqserve.grpc.calls import Calls, Context, unary
from seqserve.grpc.registration import Undecodable
from seqserve.grpc.status import to_status
from seqserve.kserve import config
from seqserve.kserve.messages import (
    Inputs,
    Sequence,
    check_outputs,
    infer_response,
    inputs_of,
    sequence_of,
    session_id,
)

STREAM_MAX_IN_FLIGHT = 256  # as the native StepStream: then reading waits


def start_missing(sequence: Sequence, model: str) -> InvalidArgument:
    return InvalidArgument(
        f"inference request for sequence {sequence.id} to model '{model}' must specify the "
        "START flag on the first request of the sequence"
    )


def no_correlation_id(model: str) -> InvalidArgument:
    return InvalidArgument(
        f"inference request to model '{model}' must specify a non-zero or non-empty correlation ID"
    )


@dataclass(slots=True)
class _Tag:
    """What the writer needs to answer one request of a stream."""

    request_id: str
    model: str
    version: str
    spec: ModelSpec | None  # None for a request refused before its model was known
    batched: bool
    ending: str  # the session its answer closes (END), or ""


class KServeServicer(kpb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, sessions: SessionManager, calls: Calls) -> None:
        self._sessions = sessions
        self.calls = calls
        self._max_steps = sessions.settings.max_steps_per_request
        self._ready = True  # until shutdown begins
        self._streams: set[StepPipeline[_Tag]] = set()

    def stop_serving(self, reason: SeqServeError) -> None:
        """Shutdown: not ready any more; open streams end once their steps are answered."""
        self._ready = False
        for pipeline in self._streams:
            pipeline.close(reason)

    # -- health and metadata (ServerLive and ServerReady stay open, like gRPC health) ------

    async def ServerLive(self, request: kpb.ServerLiveRequest, context: Context) -> object:
        return kpb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: kpb.ServerReadyRequest, context: Context) -> object:
        return kpb.ServerReadyResponse(ready=self._ready)

    @unary
    async def ModelReady(
        self, request: kpb.ModelReadyRequest, principal: str
    ) -> kpb.ModelReadyResponse:
        try:
            self._sessions.version(request.name, request.version or None)
        except NotFound:
            return kpb.ModelReadyResponse(ready=False)
        return kpb.ModelReadyResponse(ready=self._ready)

    @unary
    async def ServerMetadata(
        self, request: kpb.ServerMetadataRequest, principal: str
    ) -> kpb.ServerMetadataResponse:
        return kpb.ServerMetadataResponse(
            name="seqserve", version=__version__, extensions=list(config.EXTENSIONS)
        )

    @unary
    async def ModelMetadata(
        self, request: kpb.ModelMetadataRequest, principal: str
    ) -> kpb.ModelMetadataResponse:
        v = self._sessions.version(request.name, request.version or None)
        versions = next(m.versions for m in self._sessions.models() if m.name == v.model.name)
        return config.metadata(v, versions)

    @unary
    async def ModelConfig(
        self, request: kpb.ModelConfigRequest, principal: str
    ) -> kpb.ModelConfigResponse:
        v = self._sessions.version(request.name, request.version or None)
        return kpb.ModelConfigResponse(config=config.model_config(v, self._sessions.settings))

    # -- inference -------------------------------------------------------------------------

    @unary
    async def ModelInfer(
        self, request: kpb.ModelInferRequest, principal: str
    ) -> kpb.ModelInferResponse:
        sequence = sequence_of(request)
        model = request.model_name
        if not sequence.given:  # stateless: the zero state, nothing kept
            v = self._sessions.version(model, request.model_version or None)
            check_outputs(request, model, v.spec)
            inputs = inputs_of(request, model, v.spec)
            v, result = await self._sessions.catalog.run_once(
                model, v.model.version, inputs.values, self._max_steps
            )
            return infer_response(
                request.id, model, v.model.version, v.spec, result.outputs, inputs.batched
            )
        if sequence.start:  # a bad request must not start (or restart) its sequence
            self._checked(request, self._sessions.version(model, request.model_version or None))
        sid, v = await self._open(request, sequence, principal)
        inputs = self._checked(request, v)
        result = await self._sessions.step(sid, inputs.values, principal)
        if sequence.end:
            await self._sessions.close_session(sid, principal)
        return infer_response(
            request.id, model, v.model.version, v.spec, result.outputs, inputs.batched
        )

    async def _open(
        self, request: kpb.ModelInferRequest, sequence: Sequence, principal: str
    ) -> tuple[str, ModelVersion]:
        """The session of a request's sequence and its version: created on START, else the
        open one (Triton's refusal when there is none)."""
        model = request.model_name
        if not sequence.id:
            raise no_correlation_id(model)
        sid = session_id(principal, model, sequence)
        if not sequence.start:
            await self._sessions.ensure(sid)  # with a shared store: load it here
            return sid, self._existing(request, sequence, principal, sid)
        self._sessions.version(model, request.model_version or None)  # NotFound first
        with contextlib.suppress(NotFound):
            await self._sessions.close_session(sid, principal)  # START on a live one
        await self._sessions.create_session(model, request.model_version or None, sid, principal)
        return sid, self._sessions.version_of(sid, principal)

    @staticmethod
    def _checked(request: kpb.ModelInferRequest, v: ModelVersion) -> Inputs:
        """The request's input for version `v`, and its requested outputs checked."""
        if request.outputs:  # most requests ask for none: all of them
            check_outputs(request, request.model_name, v.spec)
        return inputs_of(request, request.model_name, v.spec)

    def _existing(
        self, request: kpb.ModelInferRequest, sequence: Sequence, principal: str, sid: str
    ) -> ModelVersion:
        """The version of an open sequence; for one that is not open, NOT_FOUND for an
        unknown model and Triton's START refusal otherwise."""
        try:
            return self._sessions.version_of(sid, principal)
        except NotFound:
            self._sessions.version(request.model_name, request.model_version or None)
            raise start_missing(sequence, request.model_name) from None

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterable[kpb.ModelInferRequest], context: Context
    ) -> None:
        calls = self.calls
        calls.started()
        started = time.perf_counter()
        principal, code, answered = "-", "OK", 0
        try:
            try:
                principal = calls.principal_of(context)
            except Unauthenticated as exc:
                code = grpc.StatusCode.UNAUTHENTICATED.name
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
            stream = _Stream(self, principal)
            self._streams.add(stream.pipeline)
            try:
                failure = await stream.pipeline.run(
                    request_iterator, stream.decode, stream.encode, context.write
                )
            finally:
                self._streams.discard(stream.pipeline)
                answered = stream.answered
            if failure is not None:  # shutdown, or the transport failed
                status, message = to_status(failure)
                code = status.name
                await context.abort(status, message)
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        finally:
            calls.finished("ModelStreamInfer", code, principal, "", started, answered)


class _Stream:
    """One ModelStreamInfer call: its pipeline, and the sequences it is ending."""

    def __init__(self, servicer: KServeServicer, principal: str) -> None:
        self._servicer = servicer
        self._sessions = servicer._sessions
        self._principal = principal
        self.pipeline: StepPipeline[_Tag] = StepPipeline(
            servicer._sessions, principal, STREAM_MAX_IN_FLIGHT
        )
        # Sessions whose END step is in flight: later requests for them wait until it is
        # answered and the session closed, so that they see the sequence ended.
        self._ending: dict[str, asyncio.Event] = {}
        self._keys = itertools.count()  # keys of answers that belong to no sequence
        self.answered = 0

    def decode(
        self, request: kpb.ModelInferRequest | Undecodable
    ) -> Step[_Tag] | Answered[_Tag] | Coroutine[Any, Any, Step[_Tag] | Answered[_Tag]]:
        """A request as a step; a coroutine for those that must wait or open a session
        first (START, a sequence whose END is in flight, a stateless call, a shared store)."""
        tag = _Tag("", "", "", None, False, "")
        if isinstance(request, Undecodable):
            return Answered(self._key(), tag, None, InvalidArgument(request.message))
        tag.request_id, tag.model = request.id, request.model_name
        key = ""
        try:
            sequence = sequence_of(request)
            if not sequence.given:
                return self._stateless(request, tag)
            if not sequence.id:
                raise no_correlation_id(request.model_name)
            key = session_id(self._principal, request.model_name, sequence)
            if sequence.start or key in self._ending or self._sessions.sharing is not None:
                return self._slow(request, sequence, tag, key)
            v = self._servicer._existing(request, sequence, self._principal, key)
            return self._step(request, sequence, tag, key, v)
        except Exception as exc:  # answered in band, in the order of its sequence
            return Answered(key or self._key(), tag, None, exc)

    async def _slow(
        self, request: kpb.ModelInferRequest, sequence: Sequence, tag: _Tag, key: str
    ) -> Step[_Tag] | Answered[_Tag]:
        try:
            ending = self._ending.get(key)
            if ending is not None:  # its END is in flight: see the sequence ended first
                await ending.wait()
            if sequence.start:  # a bad request must not start (or restart) its sequence
                v = self._sessions.version(request.model_name, request.model_version or None)
                self._servicer._checked(request, v)
            sid, v = await self._servicer._open(request, sequence, self._principal)
            return self._step(request, sequence, tag, sid, v)
        except Exception as exc:
            return Answered(key, tag, None, exc)

    def _step(
        self,
        request: kpb.ModelInferRequest,
        sequence: Sequence,
        tag: _Tag,
        sid: str,
        v: ModelVersion,
    ) -> Step[_Tag]:
        tag.version, tag.spec = v.model.version, v.spec
        inputs = self._servicer._checked(request, v)
        tag.batched = inputs.batched
        if sequence.end:
            tag.ending = sid
            self._ending[sid] = asyncio.Event()
        return sid, inputs.values, None, tag

    async def _stateless(self, request: kpb.ModelInferRequest, tag: _Tag) -> Answered[_Tag]:
        model = request.model_name
        try:
            v = self._sessions.version(model, request.model_version or None)
            check_outputs(request, model, v.spec)
            inputs = inputs_of(request, model, v.spec)
            v, result = await self._sessions.catalog.run_once(
                model, v.model.version, inputs.values, self._servicer._max_steps
            )
        except Exception as exc:
            return Answered(self._key(), tag, None, exc)
        tag.version, tag.spec, tag.batched = v.model.version, v.spec, inputs.batched
        return Answered(self._key(), tag, result, None)

    def _key(self) -> str:
        return f"#{next(self._keys)}"  # no session id starts with '#' here: its own order

    def encode(self, answer: Answer[_Tag]) -> kpb.ModelStreamInferResponse:
        tag = answer.tag
        self.answered += 1
        if tag.ending:  # END: the sequence closes once its step is answered
            with contextlib.suppress(SeqServeError):  # already gone: expired, or closed elsewhere
                self._sessions.close(tag.ending, self._principal)
            self._ending.pop(tag.ending).set()
        calls = self._servicer.calls
        if answer.error is not None or answer.result is None or tag.spec is None:
            status, message = to_status(answer.error or InvalidArgument("no answer"))
            calls.requests[("ModelStreamInfer", status.name)] += 1
            # The request's id beside the error, for clients that match answers by it.
            which = kpb.ModelInferResponse(
                model_name=tag.model, model_version=tag.version, id=tag.request_id
            )
            return kpb.ModelStreamInferResponse(error_message=message, infer_response=which)
        calls.requests[("ModelStreamInfer", "OK")] += 1
        answer_pb = kpb.ModelStreamInferResponse()
        outputs = answer.result.outputs  # (T, O)
        into = answer_pb.infer_response
        infer_response(tag.request_id, tag.model, tag.version, tag.spec, outputs, tag.batched, into)
        return answer_pb
