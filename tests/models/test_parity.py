"""ONNX Runtime, fed whole sequences, single steps or random chunks, equals PyTorch.

The reference is always PyTorch's forward over the whole sequence in one call,
computed independently of the ONNX graph. Outputs here are in raw units of
modest size (|y| < ~20), where float32 resolves well below the 1e-5 tolerance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.models.conftest import Exported, export_small

TOL = 1e-5
STEPS = 512
BATCH = 2
# (cell, layers, input, hidden, output): every cell with 1-3 layers, varied sizes.
CONFIGS = [
    ("rnn", 1, 1, 8, 1),
    ("rnn", 2, 3, 16, 2),
    ("rnn", 3, 2, 24, 1),
    ("gru", 1, 2, 16, 3),
    ("gru", 2, 1, 32, 1),
    ("gru", 3, 3, 8, 2),
    ("lstm", 1, 1, 32, 1),
    ("lstm", 2, 2, 8, 2),
    ("lstm", 3, 1, 16, 1),
]


@pytest.fixture(scope="module", params=CONFIGS, ids=lambda c: "-".join(map(str, c)))
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    cell, layers, f, h, o = request.param
    return export_small(tmp_path_factory.mktemp("parity"), cell, layers, f, h, o)


@pytest.fixture(scope="module")
def sequence(exported: Exported) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Raw inputs (B, T, F) around the normalisation's scale, and a non-zero initial state."""
    spec = exported.spec
    rng = np.random.default_rng(7)
    norm = exported.module.normalization
    noise = rng.standard_normal((BATCH, STEPS, spec.input_size))  # (B, T, F)
    x = (norm.input_mean.numpy() + norm.input_std.numpy() * noise).astype(np.float32)
    state = tuple(
        (0.5 * rng.standard_normal((spec.num_layers, BATCH, spec.hidden_size))).astype(np.float32)
        for _ in spec.states
    )  # each (L, B, H)
    return x, state


def torch_full(
    exported: Exported, x: np.ndarray, state: tuple[np.ndarray, ...]
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    with torch.no_grad():
        y, final = exported.module(torch.from_numpy(x), tuple(torch.from_numpy(s) for s in state))
    return y.numpy(), tuple(s.numpy() for s in final)


def run_in_chunks(
    exported: Exported, x: np.ndarray, state: tuple[np.ndarray, ...], sizes: list[int]
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Feed x through ONNX Runtime chunk by chunk, carrying the state between calls."""
    assert sum(sizes) == x.shape[1]
    ys = []
    start = 0
    for n in sizes:
        y, state = exported.run(x[:, start : start + n], state)  # y (B, n, O)
        ys.append(y)
        start += n
    return np.concatenate(ys, axis=1), state  # (B, T, O)


def max_diff(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> float:
    return max(float(np.abs(u - v).max()) for u, v in zip(a, b, strict=True))


def test_full_sequence_matches_pytorch(
    exported: Exported, sequence: tuple[np.ndarray, tuple[np.ndarray, ...]]
) -> None:
    x, state = sequence
    y_ref, s_ref = torch_full(exported, x, state)
    y, s = exported.run(x, state)
    assert y.shape == (BATCH, STEPS, exported.spec.output_size)
    assert max_diff((y, *s), (y_ref, *s_ref)) <= TOL


def test_single_steps_match_pytorch(
    exported: Exported, sequence: tuple[np.ndarray, tuple[np.ndarray, ...]]
) -> None:
    x, state = sequence
    y_ref, s_ref = torch_full(exported, x, state)
    y, s = run_in_chunks(exported, x, state, [1] * STEPS)
    assert max_diff((y, *s), (y_ref, *s_ref)) <= TOL


def test_random_chunks_match_pytorch(
    exported: Exported, sequence: tuple[np.ndarray, tuple[np.ndarray, ...]]
) -> None:
    x, state = sequence
    rng = np.random.default_rng(11)
    sizes: list[int] = []
    while sum(sizes) < STEPS:
        sizes.append(int(min(rng.integers(1, 48), STEPS - sum(sizes))))
    assert len(set(sizes)) > 5  # genuinely mixed chunk lengths
    y_ref, s_ref = torch_full(exported, x, state)
    y, s = run_in_chunks(exported, x, state, sizes)
    assert max_diff((y, *s), (y_ref, *s_ref)) <= TOL


def test_state_carried_between_calls_matters(
    exported: Exported, sequence: tuple[np.ndarray, tuple[np.ndarray, ...]]
) -> None:
    """Resetting the state between steps gives different outputs: the parity above
    holds only because the state is carried, so it would catch a dropped state."""
    x, state = sequence
    y_ref, _ = torch_full(exported, x, state)
    ys = [exported.run(x[:, t : t + 1], state)[0] for t in range(0, STEPS, 8)]  # (B, 1, O) each
    y_reset = np.concatenate(ys, axis=1)  # (B, STEPS / 8, O)
    assert float(np.abs(y_reset - y_ref[:, ::8]).max()) > 1000 * TOL


def test_batch_rows_are_independent(
    exported: Exported, sequence: tuple[np.ndarray, tuple[np.ndarray, ...]]
) -> None:
    """Each batch row run alone gives what it gave inside the batch (sessions do not mix)."""
    x, state = sequence
    y_batch, _ = exported.run(x[:, :64], state)
    for b in range(BATCH):
        row_state = tuple(s[:, b : b + 1] for s in state)  # (L, 1, H)
        y_row, _ = exported.run(x[b : b + 1, :64], row_state)
        assert float(np.abs(y_row[0] - y_batch[b]).max()) <= TOL


def test_exported_files_are_small(exported: Exported) -> None:
    onnx_bytes = (exported.version_dir / "model.onnx").stat().st_size
    # float32 weights dominate the file; the graph itself is a few kB.
    assert onnx_bytes < 4 * exported.spec.parameters + 64 * 1024


def test_version_dir_has_only_the_contract_files(exported: Exported) -> None:
    assert sorted(p.name for p in Path(exported.version_dir).iterdir()) == [
        "model.json",
        "model.onnx",
    ]
