"""The `seqserve` command: predict end to end, models, delegation to other packages."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from seqserve import cli
from tests.grpc.conftest import Zoo
from tests.grpc.harness import ROOT, ServerThread

MODEL = "lstm-ar"  # autoregressive, one input


def write_series(path: Path, values: np.ndarray) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["week", "level"])
        for i, v in enumerate(values):
            w.writerow([f"2020-W{i:03d}", f"{v:.6f}"])


def test_predict_streams_a_csv_and_writes_predictions_and_a_plot(
    server: ServerThread, zoo: Zoo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(12)
    level = np.cumsum(rng.normal(0, 0.3, 600)).astype(np.float32)  # a random walk
    src, out, png = tmp_path / "series.csv", tmp_path / "preds.csv", tmp_path / "plot.png"
    write_series(src, level)
    argv = ["predict", "--model", MODEL, "--csv", str(src), "--target", server.target]
    code = cli.main([*argv, "--out", str(out), "--plot", str(png), "--chunk", "37"])
    err = capsys.readouterr().err
    assert code == 0, err
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["week"] for r in rows] == [f"2020-W{i:03d}" for i in range(600)]
    got = np.array([[float(r["prediction"])] for r in rows], np.float32)  # (N, 1)
    x = np.array([[float(r["level"])] for r in rows], np.float32)
    want = zoo.forward(MODEL, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)  # written with 6 digits
    assert "predicted 600 rows" in err and "one-step MAE" in err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_predict_refuses_a_bad_csv_with_exit_2(
    server: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "gaps.csv"
    src.write_text("week,level\nw1,1.0\nw2,\nw3,2.0\n")
    argv = ["predict", "--model", MODEL, "--csv", str(src), "--target", server.target]
    assert cli.main(argv) == 2
    assert "row 3, column 'level': expected a finite number, got ''" in capsys.readouterr().err
    wide = tmp_path / "wide.csv"
    wide.write_text("a,b,c\n1,2,3\n")
    assert (
        cli.main(["predict", "--model", MODEL, "--csv", str(wide), "--target", server.target]) == 2
    )
    assert "takes 1 input(s) per step, got 3 column(s)" in capsys.readouterr().err


def test_predict_never_drops_a_blank_line_silently(
    server: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["predict", "--model", MODEL, "--target", server.target, "--csv"]
    holed = tmp_path / "holed.csv"
    holed.write_text("week,level\nw1,1.0\nw2,1.5\n\nw3,2.0\n")  # a step missing mid-series
    assert cli.main([*argv, str(holed)]) == 2
    assert "line 4: expected a data row, got a blank line" in capsys.readouterr().err
    trailing = tmp_path / "trailing.csv"
    trailing.write_text("week,level\nw1,1.0\nw2,1.5\n\n\n")  # nothing after them: no step lost
    out = tmp_path / "out.csv"
    assert cli.main([*argv, str(trailing), "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 3  # the header and both rows


def test_a_port_in_use_is_said_in_plain_words(
    server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    port = server.target.rpartition(":")[2]
    assert cli.main(["serve", "--address", f"127.0.0.1:{port}"]) == 1
    assert f"port {port} is already in use" in caplog.text and "--address" in caplog.text


def test_predict_against_no_server_fails_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "s.csv"
    write_series(src, np.zeros(3, np.float32))
    argv = ["predict", "--model", MODEL, "--csv", str(src), "--target", "127.0.0.1:1"]
    assert cli.main(argv) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_models_lists_a_server_and_a_folder(
    server: ServerThread, zoo: Zoo, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["models", "--target", server.target]) == 0
    from_server = capsys.readouterr().out
    assert cli.main(["models", "--repository", str(zoo.repository)]) == 0
    from_folder = capsys.readouterr().out
    assert from_server == from_folder
    lines = from_server.splitlines()
    assert lines[0].split()[:3] == ["model", "version", "cell"]
    assert sorted(line.split()[0] for line in lines[1:]) == sorted(zoo.modules)
    assert any(line.split()[:4] == ["lstm-wide", "1", "(latest)", "lstm"] for line in lines)


def test_models_in_a_folder_are_what_the_server_would_serve(
    server: ServerThread, zoo: Zoo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Folders the loader skips ("." and "_" names) are not listed; one it refuses fails."""
    repo = tmp_path / "repo"
    shutil.copytree(zoo.repository, repo)
    (repo / "_drafts" / "1").mkdir(parents=True)  # not a model to the server
    (repo / ".cache").mkdir()
    (repo / "lstm-ar" / "_old").mkdir()  # not a version to the server
    assert cli.main(["models", "--target", server.target]) == 0
    from_server = capsys.readouterr().out
    assert cli.main(["models", "--repository", str(repo)]) == 0
    assert capsys.readouterr().out == from_server
    (repo / "lstm-ar" / "2").mkdir()  # a version without its files: the server would refuse
    assert cli.main(["models", "--repository", str(repo)]) == 1
    err = capsys.readouterr().err
    assert "model lstm-ar/2: missing" in err and "model.onnx" in err
    assert cli.main(["models", "--repository", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_train_export_compare_and_bench_are_handed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, list[str]] = {}
    for name in ("seqserve.models.cli", "seqserve.bench"):
        fake = types.ModuleType(name)
        fake.main = lambda argv, name=name: seen.setdefault(name, list(argv)) and 7  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, name, fake)
    assert cli.main(["export", "--checkpoint", "c.pt", "--help"]) == 7
    assert seen["seqserve.models.cli"] == ["export", "--checkpoint", "c.pt", "--help"]
    assert cli.main(["bench", "--quick"]) == 7
    assert seen["seqserve.bench"] == ["--quick"]


@pytest.mark.parametrize("args", [["--help"], ["serve", "--help"]])
def test_python_m_seqserve_is_seqserve_serve(args: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "seqserve", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "--max-message-bytes" in done.stdout and "SEQSERVE_MAX_MESSAGE_BYTES" in done.stdout
    assert "usage: seqserve serve" in done.stdout


def test_the_server_client_and_cli_never_import_torch() -> None:
    code = (
        "import sys, seqserve.grpc.server, seqserve.cli, seqserve.client, seqserve.client.predict; "
        "print(sorted(m for m in ('torch', 'onnx', 'matplotlib') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
