"""Loading a repository: versions, lookup, and refusing folders that break the contract."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from seqserve.core import runtime
from seqserve.core.errors import NotFound
from seqserve.core.runtime import ModelLoadError, ModelRegistry, session_options
from tests.support import ModelZoo, torch_reference


def copy_model(zoo: ModelZoo, name: str, dest: Path, version: str = "1") -> Path:
    target = dest / name / version
    shutil.copytree(zoo.repository / name / "1", target)
    return target


def edit_spec(version_dir: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    path = version_dir / "model.json"
    spec = json.loads(path.read_text())
    edit(spec)
    path.write_text(json.dumps(spec))


def test_versions_sort_numerically_and_latest_is_highest(zoo: ModelZoo, tmp_path: Path) -> None:
    for version in ("2", "10", "1", "beta"):
        copy_model(zoo, "gru-ar", tmp_path, version)
    copy_model(zoo, "lstm-ar", tmp_path)
    (tmp_path / ".cache").mkdir()  # hidden folders are not models
    registry = ModelRegistry.load(tmp_path)
    entries = {e.name: e for e in registry.list()}
    assert sorted(entries) == ["gru-ar", "lstm-ar"]
    assert entries["gru-ar"].versions == ["beta", "1", "2", "10"]
    assert entries["gru-ar"].latest == "10"
    assert registry.get("gru-ar").version == "10"
    assert registry.get("gru-ar", "").version == "10"
    assert registry.get("gru-ar", "2").version == "2"
    assert len(registry.models()) == 5
    with pytest.raises(
        NotFound, match=r"model 'gru-ar' has no version '3'; available: \['beta', '1', '2', '10'\]"
    ):
        registry.get("gru-ar", "3")


def test_loaded_model_runs_batches_like_pytorch(registry: ModelRegistry, zoo: ModelZoo) -> None:
    model = registry.get("lstm-wide")
    x = np.random.default_rng(0).normal(0, 1, (3, 7, 3)).astype(np.float32)  # (B, T, F)
    y, states = model.run(x, model.zero_states(3))
    assert y.shape == (3, 7, 2)
    assert [s.shape for s in states] == [(1, 3, 10), (1, 3, 10)]
    for b in range(3):
        np.testing.assert_allclose(y[b], torch_reference(zoo.modules["lstm-wide"], x[b]), atol=1e-5)


def test_session_options_leave_the_event_loop_its_core() -> None:
    opts = session_options(2)
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (2, 1)
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert opts.get_session_config_entry("session.inter_op.allow_spinning") == "0"


def _input_size_4(spec: dict[str, Any]) -> None:
    spec["input_size"] = 4


def _output_size_5(spec: dict[str, Any]) -> None:
    spec["output_size"] = 5


def _hidden_99(spec: dict[str, Any]) -> None:
    spec["states"][1]["shape"] = [1, -1, 99]


def _rank_2(spec: dict[str, Any]) -> None:
    spec["states"][0]["shape"] = [-1, 10]
    spec["states"][0]["batch_axis"] = 0


def _renamed_state(spec: dict[str, Any]) -> None:
    spec["states"][0]["input"] = "h_in"


def _one_state_only(spec: dict[str, Any]) -> None:
    spec["states"] = spec["states"][:1]


def _bad_format(spec: dict[str, Any]) -> None:
    spec["format"] = "other/v9"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_input_size_4, r"model lstm-wide/1: input 'x' dim 2: expected 4, got 3"),
        (_output_size_5, r"model lstm-wide/1: output 'y' dim 2: expected 5, got 2"),
        (_hidden_99, r"model lstm-wide/1: state input 'c0' dim 2: expected 99, got 10"),
        (_rank_2, r"model lstm-wide/1: state input 'h0': expected rank 2 \[-1, 10\], got rank 3"),
        (
            _renamed_state,
            r"model lstm-wide/1: spec names inputs \['x', 'h_in', 'c0'\]"
            r".*graph has inputs \['c0', 'h0', 'x'\]",
        ),
        (_one_state_only, r"model lstm-wide/1: graph has inputs the spec does not feed: \['c0'\]"),
        (
            _bad_format,
            r"model lstm-wide/1: spec format: expected 'seqserve.model/v1', got 'other/v9'",
        ),
    ],
)
def test_spec_that_contradicts_the_graph_fails_the_load(
    zoo: ModelZoo, tmp_path: Path, edit: Callable[[dict[str, Any]], None], message: str
) -> None:
    copy_model(zoo, "gru-ar", tmp_path)  # a good model beside the broken one
    edit_spec(copy_model(zoo, "lstm-wide", tmp_path), edit)
    with pytest.raises(ModelLoadError, match=message):
        ModelRegistry.load(tmp_path)


def test_broken_folders_fail_the_load(zoo: ModelZoo, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="is not a folder"):
        ModelRegistry.load(tmp_path / "missing")
    with pytest.raises(ModelLoadError, match="holds no models"):
        ModelRegistry.load(tmp_path)
    (tmp_path / "empty-model").mkdir()
    with pytest.raises(ModelLoadError, match="model empty-model: no version folders"):
        ModelRegistry.load(tmp_path)
    shutil.rmtree(tmp_path / "empty-model")
    version_dir = copy_model(zoo, "rnn-ar", tmp_path)
    (version_dir / "model.onnx").unlink()
    with pytest.raises(ModelLoadError, match=r"model rnn-ar/1: missing .*model\.onnx"):
        ModelRegistry.load(tmp_path)
    (version_dir / "model.onnx").write_bytes(b"not an onnx graph")
    with pytest.raises(ModelLoadError, match=r"model rnn-ar/1: cannot load .*model\.onnx"):
        ModelRegistry.load(tmp_path)


def test_call_cost_drops_the_first_calls_and_what_a_busy_machine_adds(
    registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The estimate that decides inline rounds is the model's cost, from any start.

    Scripted call times: a fresh session's slow first calls, then steady calls with
    a neighbour's spikes among them. The estimate is the steady cost, not a median
    that the first calls or the spikes pull up.
    """
    model = registry.get("lstm-ar")
    warm = [141e-6, 49e-6, 59e-6, 63e-6, 46e-6]  # dropped
    small = [37e-6, 80e-6, 37e-6, 90e-6, 38e-6, 85e-6, 37e-6, 88e-6, 37e-6]
    wide = [37e-6 + 63 * 2e-6 + extra for extra in (0, 50e-6, 0, 60e-6, 0, 0, 70e-6, 0, 0)]
    assert len(warm) == runtime.WARMUP_CALLS and len(small) == runtime.MEASURED_CALLS
    script = iter(warm + small + warm + wide)
    now = [0.0]

    def scripted_run(x: Any, states: Any) -> None:
        now[0] += next(script)

    monkeypatch.setattr(model, "run", scripted_run)
    monkeypatch.setattr(runtime.time, "thread_time", lambda: now[0])
    call_s, row_step_s = model._measure()
    assert call_s == pytest.approx(37e-6)
    assert row_step_s == pytest.approx(2e-6)
