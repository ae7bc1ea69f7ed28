"""A model seqserve did not build: an ONNX graph made with onnx.helper around ONNX's own LSTM
operator (time-major inside, transposed at both ends, its own linear head), described with
the public helper,
checked with `seqserve models check`, served, and matched against ONNX Runtime offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from seqserve import cli
from seqserve.client import Client
from seqserve.core.spec import SpecError, load_spec
from seqserve.models.contract import describe, write_model_json
from tests.grpc.conftest import settings_for
from tests.grpc.harness import ServerThread

F, H, OUT = 3, 6, 2  # inputs, hidden size, outputs


def lstm_graph(path: Path, seed: int = 0) -> int:
    """x (B, T, F) -> ONNX LSTM -> linear head -> y (B, T, OUT); states (1, B, H).
    Returns the parameter count."""
    rng = np.random.default_rng(seed)
    weights = {
        "W": rng.normal(0, 0.4, (1, 4 * H, F)),  # (directions, 4H, F)
        "R": rng.normal(0, 0.4, (1, 4 * H, H)),
        "B": rng.normal(0, 0.1, (1, 8 * H)),
        "head_w": rng.normal(0, 0.5, (H, OUT)),
        "head_b": rng.normal(0, 0.1, (OUT,)),
    }
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "dir_axis"))
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),  # (T, B, F)
        helper.make_node("LSTM", ["xt", "W", "R", "B", "", "h0", "c0"], ["Y", "hn", "cn"],
                         hidden_size=H),  # Y (T, 1, B, H), hn and cn (1, B, H)
        helper.make_node("Squeeze", ["Y", "dir_axis"], ["Yt"]),  # (T, B, H)
        helper.make_node("Transpose", ["Yt"], ["Yb"], perm=[1, 0, 2]),  # (B, T, H)
        helper.make_node("MatMul", ["Yb", "head_w"], ["Yo"]),  # (B, T, OUT)
        helper.make_node("Add", ["Yo", "head_b"], ["y"]),
    ]  # fmt: skip
    state = [1, "B", H]
    graph = helper.make_graph(
        nodes,
        "own-lstm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", F]),
         helper.make_tensor_value_info("h0", TensorProto.FLOAT, state),
         helper.make_tensor_value_info("c0", TensorProto.FLOAT, state)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "T", OUT]),
         helper.make_tensor_value_info("hn", TensorProto.FLOAT, state),
         helper.make_tensor_value_info("cn", TensorProto.FLOAT, state)],
        inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return sum(int(v.size) for v in weights.values())


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    version = tmp_path / "repository" / "own-lstm" / "1"
    version.mkdir(parents=True)
    parameters = lstm_graph(version / "model.onnx")
    spec = describe(
        None, cell="lstm", input_size=F, output_size=OUT, hidden_size=H, num_layers=1,
        states=[("h0", "hn", (1, -1, H), 1), ("c0", "cn", (1, -1, H), 1)],
        parameters=parameters, training={"built_with": "onnx.helper"},
    )  # fmt: skip
    write_model_json(spec, version)
    return tmp_path / "repository"


def test_a_graph_built_elsewhere_is_served_as_onnx_runtime_runs_it(
    repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    version = repository / "own-lstm" / "1"
    assert cli.main(["models", "check", str(version)]) == 0
    assert "ok: own-lstm/1 would be served" in capsys.readouterr().out
    x = np.random.default_rng(3).normal(0, 1, (50, F)).astype(np.float32)  # (T, F)
    offline = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    zeros = np.zeros((1, 1, H), np.float32)
    (want, _, _) = offline.run(None, {"x": x[None], "h0": zeros, "c0": zeros})  # (1, T, OUT)
    with ServerThread(settings_for(repository)) as server, Client(server.target) as client:
        info = client.model_info("own-lstm")
        assert (info.input_size, info.output_size, info.cell) == (F, OUT, "lstm")
        assert [st.batch_axis for st in info.states] == [1, 1]
        with client.session("own-lstm") as s:
            chunks = [x[i : i + k] for i, k in ((0, 1), (1, 7), (8, 20), (28, 22))]
            got = np.concatenate(list(s.stream(chunks)))  # (T, OUT): state kept by the server
    np.testing.assert_allclose(got, want[0], rtol=1e-5, atol=1e-5)


def test_a_spec_that_does_not_fit_its_graph_or_the_schema_is_refused(
    repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    version = repository / "own-lstm" / "1"
    spec = json.loads((version / "model.json").read_text())
    (version / "model.json").write_text(json.dumps({**spec, "input_size": F + 1}))
    assert cli.main(["models", "check", str(version)]) == 1
    assert "graph" in capsys.readouterr().err  # the graph's feature size is F, not F + 1
    (version / "model.json").write_text(json.dumps({**spec, "states": [{"input": "h0"}]}))
    with pytest.raises(SpecError, match=r"model.json.states\[0\]: must contain"):
        load_spec(version)
    assert cli.main(["models", "check", str(version)]) == 1
    assert "model.json.states[0]" in capsys.readouterr().err
