"""The keystone: what the server returns equals PyTorch's full-sequence forward.

Dozens of sessions of three cells run at once over every path (their own
streams, one stream multiplexing many sessions, the batch call and the unary
call), with random chunk sizes and random interleaving. Each session's
outputs, concatenated, must equal the PyTorch original run once over that
session's whole input sequence.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest

from seqserve.client import AsyncClient
from tests.grpc.conftest import Zoo, settings_for
from tests.grpc.harness import ServerThread
from tests.support import REPOSITORY_MODELS

PATHS = ("stream", "multiplexed", "batch", "unary")


@dataclass
class Plan:
    """One session's inputs, cut into random chunks, and the outputs it got back."""

    model: str
    path: str
    x: np.ndarray  # (N, F)
    chunks: list[np.ndarray]  # (T_i, F) each
    session_id: str = ""
    outputs: list[np.ndarray] = field(default_factory=list)  # (T_i, O) each


def make_plans(zoo: Zoo, rng: np.random.Generator, per_path_and_model: int) -> list[Plan]:
    plans = []
    for model in REPOSITORY_MODELS:
        for path in PATHS:
            for _ in range(per_path_and_model):
                n = int(rng.integers(200, 320))
                x = zoo.inputs(model, n, rng)  # (N, F)
                cuts = np.cumsum(rng.integers(1, 17, size=n))
                cuts = cuts[cuts < n]
                plans.append(Plan(model, path, x, np.split(x, cuts)))
    return plans


async def pause(rng: random.Random) -> None:
    """Yield to the event loop a random number of times: random interleaving."""
    for _ in range(rng.randrange(3)):
        await asyncio.sleep(0)


async def own_stream(client: AsyncClient, plan: Plan, rng: random.Random) -> None:
    async def chunks() -> AsyncIterator[np.ndarray]:
        for c in plan.chunks:
            await pause(rng)
            yield c

    async with client.session(plan.model) as s:
        plan.session_id = s.id
        async for y in s.stream(chunks()):
            plan.outputs.append(y)
        assert (await s.info()).position == len(plan.x)


async def multiplexed(client: AsyncClient, plans: list[Plan], rng: random.Random) -> None:
    for p in plans:
        p.session_id = (await client.create_session(p.model)).session_id
    order = [p for p in plans for _ in p.chunks]
    rng.shuffle(order)  # a random interleaving that keeps each session's chunks in order
    sent: dict[str, int] = defaultdict(int)
    by_request: list[Plan] = []

    async def requests() -> AsyncIterator[tuple[str, np.ndarray]]:
        for p in order:
            chunk = p.chunks[sent[p.session_id]]
            sent[p.session_id] += 1
            by_request.append(p)
            await pause(rng)
            yield p.session_id, chunk

    last_request: dict[str, int] = defaultdict(lambda: -1)
    async for result in client.step_stream(requests()):
        plan = by_request[result.request_id]
        assert result.error is None, result.error
        assert result.session_id == plan.session_id
        assert result.request_id > last_request[plan.session_id], "a session's answers in order"
        last_request[plan.session_id] = result.request_id
        assert result.outputs is not None
        plan.outputs.append(result.outputs)
    for p in plans:
        assert await client.close_session(p.session_id) == len(p.x)


async def batched(client: AsyncClient, plans: list[Plan], rng: random.Random) -> None:
    for p in plans:
        p.session_id = (await client.create_session(p.model)).session_id
    done = {p.session_id: 0 for p in plans}
    while True:
        ready = [p for p in plans if done[p.session_id] < len(p.chunks)]
        if not ready:
            break
        chosen = rng.sample(ready, rng.randint(1, len(ready)))
        result = await client.batch_step(
            {p.session_id: p.chunks[done[p.session_id]] for p in chosen}
        )
        assert not result.errors, result.errors
        for p in chosen:
            p.outputs.append(result.outputs[p.session_id])
            done[p.session_id] += 1
            assert result.positions[p.session_id] == sum(
                len(c) for c in p.chunks[: done[p.session_id]]
            )
        await pause(rng)
    for p in plans:
        assert await client.close_session(p.session_id) == len(p.x)


async def unary(client: AsyncClient, plan: Plan, rng: random.Random) -> None:
    async with client.session(plan.model) as s:
        plan.session_id = s.id
        position = 0
        for c in plan.chunks:
            await pause(rng)
            plan.outputs.append(await s.step(c, position=position))
            position += len(c)


@pytest.fixture(
    scope="module",
    params=[{}, {"max_batch": 3, "batch_delay_us": 300}],
    ids=["defaults", "small-batches"],
)
def parity_server(zoo: Zoo, request: pytest.FixtureRequest) -> Iterator[ServerThread]:
    """The default batching, and rounds of at most 3 sessions that wait for company."""
    with ServerThread(settings_for(zoo.repository, **request.param)) as server:
        yield server


def test_every_path_matches_pytorch_under_concurrency(
    parity_server: ServerThread, zoo: Zoo
) -> None:
    server = parity_server
    rng = np.random.default_rng(7)
    plans = make_plans(zoo, rng, per_path_and_model=3)  # 48 sessions, ~12,500 steps
    shuffle = random.Random(11)

    async def drive() -> None:
        async with AsyncClient(server.target) as client:
            by_path = {path: [p for p in plans if p.path == path] for path in PATHS}
            shared = by_path["multiplexed"]
            await asyncio.gather(
                *(
                    own_stream(client, p, random.Random(shuffle.random()))
                    for p in by_path["stream"]
                ),
                # two multiplexed streams, each carrying half of those sessions
                multiplexed(client, shared[::2], random.Random(shuffle.random())),
                multiplexed(client, shared[1::2], random.Random(shuffle.random())),
                batched(client, by_path["batch"], random.Random(shuffle.random())),
                *(unary(client, p, random.Random(shuffle.random())) for p in by_path["unary"]),
            )

    asyncio.run(drive())
    assert len({p.session_id for p in plans}) == len(plans) == 48
    assert sum(len(p.x) for p in plans) > 9000
    worst = max(zoo.assert_matches(p.model, p.x, np.concatenate(p.outputs)) for p in plans)
    print(f"{len(plans)} sessions, largest |server - torch| = {worst:.2e}")
