"""Smoke client for the container test (deploy/ci/smoke.sh).

Waits for SERVING through the gRPC health service, checks that the server lists
the models of the repository folder, streams steps in chunks of varying length
to one model over StepStream, and compares the outputs with the same ONNX file
run in this process by ONNX Runtime on the whole sequence at once (from zero
states), so the step-by-step path in the container is checked against an
independent computation.

With --drain READY_FILE it streams single steps until the server shuts down
instead (smoke.sh sends SIGTERM once READY_FILE exists) and checks the steps
answered, the steps refused and the end of the stream. With --failover
KILL_FILE it steps sessions through a proxy before and after one replica is
killed, and checks every session against the whole sequence.

It speaks only the wire contract (generated stubs and grpc.health.v1), as any
client of the image would. Exit status 0 when everything matches.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from grpc_health.v1 import health_pb2, health_pb2_grpc

from seqserve.api import seqserve_pb2 as pb
from seqserve.api import seqserve_pb2_grpc as pb_grpc
from seqserve.core.spec import ONNX_FILE, load_spec

F32 = npt.NDArray[np.float32]
HEALTH_SERVICES = ("", "seqserve.v1.Inference")
CHUNKS = (1, 1, 1, 3, 1, 5, 2, 8)  # T of successive requests: single steps and chunks
DRAIN_PACE_S = 0.002  # between steps of the shutdown stream
DRAIN_MAX_STEPS = 20_000  # about 40 s of steps: the server must have stopped long before
DRAIN_LIMIT_S = 60.0


class SmokeError(Exception):
    """A check failed; the message says what was expected and what arrived."""


def wait_serving(channel: grpc.Channel, timeout_s: float) -> float:
    """Poll the health service until every service is SERVING; return the seconds waited."""
    health = health_pb2_grpc.HealthStub(channel)
    start = time.monotonic()
    last = "no answer"
    while time.monotonic() - start < timeout_s:
        try:
            statuses = [
                health.Check(health_pb2.HealthCheckRequest(service=s), timeout=1.0).status
                for s in HEALTH_SERVICES
            ]
            if all(s == health_pb2.HealthCheckResponse.SERVING for s in statuses):
                return time.monotonic() - start
            last = ", ".join(health_pb2.HealthCheckResponse.ServingStatus.Name(s) for s in statuses)
        except grpc.RpcError as exc:
            last = exc.code().name if isinstance(exc, grpc.Call) else repr(exc)
        time.sleep(0.1)
    raise SmokeError(f"expected SERVING within {timeout_s:.0f} s, last answer: {last}")


def series(steps: int, features: int) -> F32:
    """A deterministic CO2-like input in raw units (ppm): trend plus a yearly cycle. (T, F)"""
    t = np.arange(steps, dtype=np.float64)[:, None]  # (T, 1)
    offsets = np.arange(features, dtype=np.float64)[None, :]  # (1, F)
    weekly = 380.0 + 0.04 * t + 3.0 * np.sin(2.0 * np.pi * t / 52.18) + offsets
    return weekly.astype(np.float32)  # (T, F)


def chunk_bounds(steps: int) -> Iterator[tuple[int, int]]:
    start = 0
    for size in itertools.cycle(CHUNKS):
        if start >= steps:
            return
        end = min(start + size, steps)
        yield start, end
        start = end


def remote_outputs(stub: pb_grpc.InferenceStub, session_id: str, x: F32, output_size: int) -> F32:
    """Stream x (T, F) to the session in chunks over one StepStream; return its outputs (T, O)."""
    bounds = list(chunk_bounds(len(x)))
    requests = [
        pb.StepRequest(
            session_id=session_id, values=x[a:b].ravel().tolist(), request_id=i, position=a
        )
        for i, (a, b) in enumerate(bounds)
    ]
    responses = list(stub.StepStream(iter(requests), timeout=30.0))
    if len(responses) != len(requests):
        raise SmokeError(f"expected {len(requests)} responses, got {len(responses)}")
    outputs = []
    for i, ((a, b), response) in enumerate(zip(bounds, responses, strict=True)):
        if response.HasField("error"):
            raise SmokeError(f"request {i}: {response.error.code} {response.error.message}")
        got = (response.request_id, response.time, response.position, len(response.outputs))
        expected = (i, b - a, b, (b - a) * output_size)
        if got != expected:
            raise SmokeError(
                f"request {i}: expected (request_id, time, position, len(outputs)) {expected}, "
                f"got {got}"
            )
        outputs.append(np.asarray(response.outputs, dtype=np.float32).reshape(b - a, output_size))
    return np.concatenate(outputs)  # (T, O)


def local_outputs(version_dir: Path, x: F32) -> F32:
    """The same model in this process: the whole sequence in one call from zero states. (T, O)"""
    spec = load_spec(version_dir)
    session = ort.InferenceSession(str(version_dir / ONNX_FILE), providers=["CPUExecutionProvider"])
    feeds: dict[str, F32] = {spec.input_name: x[None]}  # (1, T, F)
    for state in spec.states:
        shape = [1 if d == -1 else d for d in state.shape]  # e.g. (L, 1, H)
        feeds[state.input] = np.zeros(shape, dtype=np.float32)
    y = session.run([spec.output_name], feeds)[0]  # (1, T, O)
    return np.asarray(y, dtype=np.float32).reshape(len(x), -1)  # (T, O)


def served_models(repository: Path) -> list[str]:
    return sorted({p.parent.parent.name for p in repository.glob(f"*/*/{ONNX_FILE}")})


def compare(label: str, got: F32, want: F32, args: argparse.Namespace) -> None:
    """Outputs from the container (T, O) against the in-process ones, within tolerance."""
    error = np.abs(got.astype(np.float64) - want.astype(np.float64))
    bound = args.atol + args.rtol * np.abs(want.astype(np.float64))
    print(
        f"{label}; max |container - in-process| = {error.max():.3g} "
        f"(max |y| {np.abs(want).max():.4g})"
    )
    if not np.all(error <= bound):
        worst = int(np.argmax(error - bound)) // got.shape[1]
        raise SmokeError(
            f"step {worst}: expected {want[worst].tolist()} within atol {args.atol} + "
            f"rtol {args.rtol}, got {got[worst].tolist()}"
        )


def check_stream(stub: pb_grpc.InferenceStub, info: pb.ModelInfo, args: argparse.Namespace) -> None:
    """Steps in chunks over one stream equal the whole sequence run in-process."""
    x = series(args.steps, info.input_size)  # (T, F)
    session = stub.CreateSession(pb.CreateSessionRequest(model=args.model), timeout=5)
    start = time.monotonic()
    got = remote_outputs(stub, session.session_id, x, info.output_size)  # (T, O)
    elapsed = time.monotonic() - start
    closed = stub.CloseSession(pb.CloseSessionRequest(session_id=session.session_id))
    if closed.position != args.steps:
        raise SmokeError(f"expected position {args.steps} at close, got {closed.position}")
    want = local_outputs(args.repository / args.model / info.version, x)  # (T, O)
    label = (
        f"{args.model} v{info.version}: {args.steps} steps in "
        f"{len(list(chunk_bounds(args.steps)))} stream requests ({elapsed * 1e3:.1f} ms)"
    )
    compare(label, got, want, args)


def check_drain(stub: pb_grpc.InferenceStub, info: pb.ModelInfo, args: argparse.Namespace) -> None:
    """Stream single steps until the server shuts down (smoke.sh sends SIGTERM once
    `args.drain` exists). Every step answered must be right and in order, steps
    refused during the shutdown must say UNAVAILABLE, and the stream must end
    cleanly instead of hanging."""
    x = series(DRAIN_MAX_STEPS, info.input_size)  # (N, F)
    session = stub.CreateSession(pb.CreateSessionRequest(model=args.model), timeout=5)
    done = threading.Event()

    def requests() -> Iterator[pb.StepRequest]:
        for i in range(DRAIN_MAX_STEPS):
            if done.is_set():
                return
            yield pb.StepRequest(
                session_id=session.session_id, values=x[i].tolist(), request_id=i, position=i
            )
            time.sleep(DRAIN_PACE_S)  # steps keep arriving while the server shuts down

    outputs: list[F32] = []
    refused = 0
    ending = "OK"
    try:
        for response in stub.StepStream(requests(), timeout=DRAIN_LIMIT_S):
            if response.HasField("error"):
                if response.error.code != grpc.StatusCode.UNAVAILABLE.value[0]:
                    raise SmokeError(
                        f"step {response.request_id}: expected UNAVAILABLE while shutting "
                        f"down, got {response.error.code}: {response.error.message}"
                    )
                refused += 1
                continue
            n = len(outputs)
            if refused or (response.request_id, response.position) != (n, n + 1):
                raise SmokeError(
                    f"expected step {n} (position {n + 1}) after {refused} refused, got step "
                    f"{response.request_id} (position {response.position})"
                )
            outputs.append(np.asarray(response.outputs, dtype=np.float32))
            if n == 0:
                args.drain.touch()  # streaming: the signal may come
    except grpc.RpcError as exc:
        code = exc.code() if isinstance(exc, grpc.Call) else None
        if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
            raise SmokeError(
                f"expected the stream to end with OK, UNAVAILABLE or CANCELLED, got {exc!r}"
            ) from exc
        ending = code.name
    finally:
        done.set()
    if not outputs or len(outputs) + refused >= DRAIN_MAX_STEPS:
        raise SmokeError(f"expected a shutdown within {DRAIN_MAX_STEPS} steps, got none")
    got = np.stack(outputs).reshape(len(outputs), -1)  # (n, O)
    want = local_outputs(args.repository / args.model / info.version, x[: len(outputs)])
    label = (
        f"stream during shutdown: {len(outputs)} steps answered, {refused} refused with "
        f"UNAVAILABLE, stream ended {ending}"
    )
    compare(label, got, want, args)


FAILOVER_SESSIONS = 12
FAILOVER_RETRY_S = 60.0


def step_retrying(
    stub: pb_grpc.InferenceStub, sid: str, x: F32, position: int
) -> tuple[pb.StepResponse, int]:
    """One unary step at `position`, resent on UNAVAILABLE (applied once: by position)."""
    deadline = time.monotonic() + FAILOVER_RETRY_S
    retries = 0
    request = pb.StepRequest(session_id=sid, values=x.ravel().tolist(), position=position)
    while True:
        try:
            routed = (("x-seqserve-session", sid),)  # the header Envoy hashes on
            return stub.Step(request, timeout=5, metadata=routed), retries
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            # Either may have been applied or not; the position makes a resend safe.
            again = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            if code not in again or time.monotonic() > deadline:
                raise
            retries += 1
            time.sleep(0.2)


def create_retrying(stub: pb_grpc.InferenceStub, model: str, sid: str) -> int:
    """Create a session with a chosen id, resent on UNAVAILABLE (a replica still starting
    behind the proxy); ALREADY_EXISTS after a resend means the first one got through."""
    deadline = time.monotonic() + FAILOVER_RETRY_S
    request = pb.CreateSessionRequest(model=model, session_id=sid)
    retries = 0
    while True:
        try:
            stub.CreateSession(request, timeout=5, metadata=(("x-seqserve-session", sid),))
            return retries
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            if code == grpc.StatusCode.ALREADY_EXISTS and retries:
                return retries
            if code != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            retries += 1
            time.sleep(0.2)


def check_failover(
    stub: pb_grpc.InferenceStub, info: pb.ModelInfo, args: argparse.Namespace
) -> None:
    """Sessions stepped through the proxy before and after smoke.sh kills a replica (it
    does once `args.failover` exists, and creates `args.failover`.done after): each
    session's outputs equal the whole sequence run in-process, none lost or doubled."""
    x = series(2 * args.steps, info.input_size)  # (2T, F), every session the same series
    ids = [f"failover-{i}" for i in range(FAILOVER_SESSIONS)]
    outputs: dict[str, list[F32]] = {sid: [] for sid in ids}
    retries = 0
    for sid in ids:
        retries += create_retrying(stub, args.model, sid)
    for half in (0, 1):
        if half == 1:
            args.failover.touch()
            done = args.failover.with_name(args.failover.name + ".done")
            deadline = time.monotonic() + 60
            while not done.exists():
                if time.monotonic() > deadline:
                    raise SmokeError(f"expected {done} within 60 s")
                time.sleep(0.05)
        for k in range(half * args.steps, (half + 1) * args.steps):
            for sid in ids:
                response, n = step_retrying(stub, sid, x[k], k)
                retries += n
                if response.position != k + 1:
                    raise SmokeError(f"{sid}: expected position {k + 1}, got {response.position}")
                outputs[sid].append(np.asarray(response.outputs, dtype=np.float32))
    want = local_outputs(args.repository / args.model / info.version, x)  # (2T, O)
    for sid in ids:
        got = np.stack(outputs[sid]).reshape(len(x), -1)  # (2T, O)
        compare(f"{sid}: {len(x)} steps across a replica kill", got, want, args)
    print(f"failover: {len(ids)} sessions, {retries} steps resent after UNAVAILABLE")


# Redial quickly while the server starts: gRPC's default first backoff is 1 s.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


def run(args: argparse.Namespace) -> None:
    with grpc.insecure_channel(args.target, options=CHANNEL_OPTIONS) as channel:
        waited = wait_serving(channel, args.timeout)
        print(f"SERVING after {waited:.2f} s of polling {args.target}")
        stub = pb_grpc.InferenceStub(channel)  # type: ignore[no-untyped-call]

        listed = sorted(m.name for m in stub.ListModels(pb.ListModelsRequest(), timeout=5).models)
        expected = served_models(args.repository)
        if listed != expected:
            raise SmokeError(f"expected models {expected} (from {args.repository}), got {listed}")

        info = stub.GetModel(pb.GetModelRequest(name=args.model), timeout=5)
        if args.failover is not None:
            check_failover(stub, info, args)
        elif args.drain is None:
            check_stream(stub, info, args)
        else:
            check_drain(stub, info, args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--target", required=True, help="HOST:PORT of the server")
    parser.add_argument("--repository", type=Path, required=True, help="the models it serves")
    parser.add_argument("--model", default="co2-lstm")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for SERVING")
    parser.add_argument(
        "--drain",
        type=Path,
        metavar="READY_FILE",
        help="stream until the server shuts down; READY_FILE appears once steps flow",
    )
    parser.add_argument(
        "--failover",
        type=Path,
        metavar="KILL_FILE",
        help="step sessions across a replica kill: KILL_FILE appears when it may come, "
        "KILL_FILE.done is awaited after it",
    )
    # Relative and absolute: raw CO2 values are ~400, where float32 spacing is 3e-5.
    parser.add_argument("--rtol", type=float, default=1e-5)
    parser.add_argument("--atol", type=float, default=1e-5)
    args = parser.parse_args(argv)
    try:
        run(args)
    except (SmokeError, grpc.RpcError) as exc:
        print(f"smoke test failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
