"""Served outputs equal PyTorch's full-sequence forward, whatever the interleaving.

Dozens of sessions over every model are driven at once: some by single-session
steps with random chunk sizes, some by a gateway sending batch requests that
mix sessions of all models with random T per item. Each session's outputs,
concatenated, must equal PyTorch run once over that session's whole input.
"""

from __future__ import annotations

import asyncio
import random

import numpy as np
import numpy.typing as npt

from seqserve.core.runtime import ModelRegistry
from seqserve.core.sessions import SessionManager
from seqserve.core.settings import CoreSettings
from tests.core.conftest import PRINCIPAL, running
from tests.support import ModelZoo, torch_reference

ATOL = 1e-5
STREAM_SESSIONS = 8  # per model, driven by step()
GATEWAY_SESSIONS = 4  # per model, driven by step_batch()


class Track:
    """One session's inputs and the outputs the server returned, in order."""

    def __init__(self, manager: SessionManager, model: str, steps: int, rng: np.random.Generator):
        self.model = model
        spec = manager.model(model).spec
        self.f = spec.input_size
        # A random walk: inputs of a realistic, slowly moving kind.
        self.inputs = np.cumsum(rng.normal(0, 0.3, (steps, self.f)), axis=0).astype(np.float32)
        self.session_id = manager.create(model, None, None, PRINCIPAL).session_id
        self.sent = 0
        self.outputs: list[npt.NDArray[np.float32]] = []
        self.positions: list[int] = []

    def take(self, t: int) -> npt.NDArray[np.float32]:
        chunk = self.inputs[self.sent : self.sent + t]  # (t, F)
        self.sent += len(chunk)
        return chunk

    @property
    def left(self) -> int:
        return len(self.inputs) - self.sent


async def stream(manager: SessionManager, track: Track, seed: int) -> None:
    r = random.Random(seed)
    while track.left:
        chunk = track.take(r.randint(1, 9))
        result = await manager.step(track.session_id, chunk.ravel(), PRINCIPAL)
        track.outputs.append(result.outputs)
        track.positions.append(result.position)
        for _ in range(r.randint(0, 3)):  # let other sessions in between
            await asyncio.sleep(0)


async def gateway(manager: SessionManager, tracks: list[Track], seed: int) -> None:
    r = random.Random(seed)
    while any(t.left for t in tracks):
        items = [t for t in tracks if t.left and r.random() < 0.8]
        r.shuffle(items)
        if not items:
            continue
        chunks = [t.take(r.randint(1, 5)) for t in items]
        result = await manager.step_batch(
            [t.session_id for t in items],
            [len(c) for c in chunks],
            np.concatenate([c.ravel() for c in chunks]),
            PRINCIPAL,
        )
        assert result.errors == []
        offset = 0
        for t, chunk, n, position in zip(
            items, chunks, result.output_lengths, result.positions, strict=True
        ):
            o = n // len(chunk)
            t.outputs.append(result.outputs[offset : offset + n].reshape(len(chunk), o))
            t.positions.append(position)
            offset += n
        assert offset == len(result.outputs)


def check(track: Track, zoo: ModelZoo) -> None:
    got = np.concatenate(track.outputs)  # (T, O)
    want = torch_reference(zoo.modules[track.model], track.inputs)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL, err_msg=track.model)
    # Positions count the steps consumed, chunk after chunk.
    lengths = np.cumsum([len(o) for o in track.outputs])
    assert track.positions == lengths.tolist()


def test_many_sessions_interleaved_match_pytorch(registry: ModelRegistry, zoo: ModelZoo) -> None:
    rng = np.random.default_rng(1)

    async def main() -> list[Track]:
        settings = CoreSettings(max_batch=16)  # small, so rounds also split into chunks
        async with running(registry, settings) as manager:
            streams, gated = [], []
            for model in zoo.modules:
                streams += [
                    Track(manager, model, int(rng.integers(150, 300)), rng)
                    for _ in range(STREAM_SESSIONS)
                ]
                gated += [
                    Track(manager, model, int(rng.integers(150, 300)), rng)
                    for _ in range(GATEWAY_SESSIONS)
                ]
            await asyncio.gather(
                *(stream(manager, t, seed) for seed, t in enumerate(streams)),
                gateway(manager, gated[: len(gated) // 2], seed=100),
                gateway(manager, gated[len(gated) // 2 :], seed=101),
            )
            rounds = sum(b.rounds for b in manager.batchers())
            rows = sum(b.rows for b in manager.batchers())
            assert rows > rounds  # steps of different sessions really shared model calls
            return streams + gated

    tracks = asyncio.run(main())
    assert len(tracks) == (STREAM_SESSIONS + GATEWAY_SESSIONS) * len(zoo.modules)
    for track in tracks:
        check(track, zoo)


def test_state_is_carried_between_calls(registry: ModelRegistry, zoo: ModelZoo) -> None:
    """The second call's outputs depend on the first call's inputs (state is kept)."""
    rng = np.random.default_rng(2)

    async def main() -> None:
        async with running(registry) as manager:
            for model, module in zoo.modules.items():
                f = zoo.specs[model].input_size
                first = rng.normal(0, 1, (20, f)).astype(np.float32)
                second = rng.normal(0, 1, (5, f)).astype(np.float32)
                sid = manager.create(model, None, None, PRINCIPAL).session_id
                await manager.step(sid, first.ravel(), PRINCIPAL)
                got = (await manager.step(sid, second.ravel(), PRINCIPAL)).outputs
                carried = torch_reference(module, np.concatenate([first, second]))[20:]
                fresh = torch_reference(module, second)
                np.testing.assert_allclose(got, carried, rtol=0, atol=ATOL)
                assert np.abs(got - fresh).max() > 1e-3, model

    asyncio.run(main())
