"""A model repository folder: which versions it holds and their specs, without ONNX Runtime.

Layout: `<repository>/<name>/<version>/model.onnx` + `model.json` (see
seqserve.core.spec). Folders whose names start with "." or "_" are not models.
The server's loader (seqserve.core.runtime) and `seqserve models --repository`
both walk a repository with `scan` and read each version with `read_version`,
so a folder lists exactly what the server would serve, or fails the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from seqserve.core.spec import ONNX_FILE, SPEC_FILE, ModelSpec, SpecError, load_spec


class ModelLoadError(Exception):
    """A repository or model folder that cannot be served."""


@dataclass(frozen=True)
class VersionFolder:
    name: str  # the model's name
    version: str
    path: Path

    @property
    def where(self) -> str:
        return f"model {self.name}/{self.version}"


def version_key(version: str) -> tuple[int, int, str]:
    """Sort key: non-numeric versions first (by name), then numeric ones by value."""
    return (1, int(version), version) if version.isdigit() else (0, 0, version)


def _visible_dirs(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))]


def scan_each(repository: Path) -> tuple[list[VersionFolder], list[tuple[str, str]]]:
    """Every version folder, and (model, problem) for each model folder that holds none.

    A reload serves what it can: a broken model folder is refused, the others go on.
    """
    repository = Path(repository)
    if not repository.is_dir():
        raise ModelLoadError(f"model repository {repository} is not a folder")
    found: list[VersionFolder] = []
    problems: list[tuple[str, str]] = []
    for model_dir in sorted(_visible_dirs(repository)):
        versions = sorted(_visible_dirs(model_dir), key=lambda p: version_key(p.name))
        if not versions:
            problems.append(
                (
                    model_dir.name,
                    f"model {model_dir.name}: no version folders in {model_dir} "
                    f"(expected {model_dir}/<version>/{ONNX_FILE})",
                )
            )
        found += [VersionFolder(model_dir.name, v.name, v) for v in versions]
    return found, problems


def scan(repository: Path) -> list[VersionFolder]:
    """Every version folder, by model name and then version order (the last is the latest).

    At startup any problem fails the whole load.
    """
    found, problems = scan_each(repository)
    if problems:
        raise ModelLoadError(problems[0][1])
    if not found:
        raise ModelLoadError(
            f"model repository {repository} holds no models "
            f"(expected <name>/<version>/{ONNX_FILE} and {SPEC_FILE})"
        )
    return found


def read_version(folder: VersionFolder) -> ModelSpec:
    """The version's spec, once both of its files are there and the spec is valid."""
    for needed in (ONNX_FILE, SPEC_FILE):
        if not (folder.path / needed).is_file():
            raise ModelLoadError(f"{folder.where}: missing {folder.path / needed}")
    try:
        return load_spec(folder.path / SPEC_FILE)
    except SpecError as exc:
        raise ModelLoadError(f"{folder.where}: {exc}") from exc
