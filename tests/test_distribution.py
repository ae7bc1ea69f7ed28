"""The built wheel installs one import name, `seqserve`, beside an application's own packages.

The wheel is built from a copy of the sources, installed into a fresh virtual
environment (its dependencies come from this one's site-packages), and
imported from an application folder that has its own `service` and `models`
packages, as a user's project might.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

from seqserve.client import Client
from tests.grpc.harness import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
SOURCES = {"service": "seqserve", "models": "seqserve/models"}  # pyproject's package-dir


def run(*argv: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, f"{argv}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("dist")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src)
    for folder in SOURCES:
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    run(*pip, "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", src)
    (built,) = (tmp / "dist").glob("seqserve-*.whl")
    return built


def fresh_venv(wheel: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A new virtual environment with the wheel alone in it: (the venv, its site-packages)."""
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", wheel)
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    return venv, Path(run(python, "-c", purelib).strip())


def isolated_env() -> dict[str, str]:
    """This process's environment without what would let the venv see this checkout."""
    env = {**os.environ, "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    return env


def test_the_wheel_holds_seqserve_only_with_every_module(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {
        "seqserve",
        wheel.name.split("-py3")[0] + ".dist-info",
    }
    # Every module of the source folders is in the wheel where its import name says.
    expected = {
        f"{package}/{p.relative_to(ROOT / folder).as_posix()}"
        for folder, package in SOURCES.items()
        for p in (ROOT / folder).rglob("*.py")
    }
    assert expected <= set(names), sorted(expected - set(names))
    assert "seqserve/models/repository/co2-lstm/1/model.onnx" in names
    assert "seqserve/py.typed" in names
    assert not [n for n in names if n.endswith("checkpoint.pt")]  # serving needs no checkpoints


def test_it_installs_beside_an_application_with_its_own_service_and_models(
    wheel: Path, tmp_path: Path
) -> None:
    venv, site = fresh_venv(wheel, tmp_path)
    python = venv / "bin" / "python"
    # numpy, grpc and the rest from this environment, after the venv's own packages.
    (site / "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    app = tmp_path / "app"
    for package in ("service", "models"):
        (app / package).mkdir(parents=True)
        (app / package / "__init__.py").write_text(f'WHO = "the application\'s {package}"\n')
    (app / "service" / "client.py").write_text('KIND = "the application\'s client"\n')
    check = textwrap.dedent(
        f"""
        import sys
        import models, service.client
        from seqserve.client import Client, SeqServeClientError
        import seqserve, seqserve.cli, seqserve.models
        assert service.client.KIND == "the application's client", service.client
        assert models.WHO == "the application's models", models
        assert seqserve.__file__.startswith({str(site)!r}), seqserve.__file__
        assert (seqserve.models.REPOSITORY / "co2-gru" / "1" / "model.json").is_file()
        assert "onnxruntime" not in sys.modules and "torch" not in sys.modules  # client only
        print("ok")
        """
    )
    env = isolated_env()
    done = subprocess.run(
        [python, "-c", check], cwd=app, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    # The console script and `python -m seqserve` come with the wheel.
    for argv in (
        [venv / "bin" / "seqserve", "serve", "--help"],
        [python, "-m", "seqserve", "--help"],
    ):
        out = subprocess.run(argv, cwd=app, env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "usage: seqserve serve" in out.stdout, out.stderr


def test_the_client_alone_needs_grpc_protobuf_and_numpy(wheel: Path, tmp_path: Path) -> None:
    """The README's client-only install: the wheel without its dependencies, and only
    grpcio, protobuf and numpy beside it, drives a running server."""
    venv, site = fresh_venv(wheel, tmp_path)
    python = venv / "bin" / "python"
    outer = Path(sysconfig.get_paths()["purelib"])
    deps = tmp_path / "client-deps"  # grpcio (and its typing-extensions), protobuf, numpy
    deps.mkdir()
    for name in ("grpc", "google", "numpy", "numpy.libs", "typing_extensions.py"):
        if (outer / name).exists():
            (deps / name).symlink_to(outer / name)
    (site / "client-deps.pth").write_text(f"{deps}\n")
    check = textwrap.dedent(
        """
        import importlib.util, sys
        import numpy as np
        from seqserve.client import Client
        assert importlib.util.find_spec("onnxruntime") is None  # not installed at all
        with Client(sys.argv[1], timeout=10) as client:
            assert "co2-lstm" in [m.name for m in client.list_models()]
            with client.session("co2-lstm") as s:
                y = s.step(np.array([[315.7], [317.5], [317.5]]))
        print(" ".join(f"{v:.6f}" for v in y.ravel()))
        """
    )
    env = isolated_env()
    with ServerProcess() as server:  # the bundled models, from this environment
        done = subprocess.run(
            [python, "-c", check, server.target],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        with Client(server.target) as client, client.session("co2-lstm") as s:
            want = s.step([[315.7], [317.5], [317.5]])
    got = [float(v) for v in done.stdout.split()]
    assert got == pytest.approx(want.ravel().tolist(), abs=1e-5)
