"""ServerSettings: one declaration gives flags, SEQSERVE_* variables, defaults and errors."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

import pytest

from seqserve import cli
from seqserve.core.settings import CoreSettings
from seqserve.settings import ServerSettings, SettingsError

# The documented configuration (flag, variable, default), written out independently of the code.
DOCUMENTED = {
    "--address": ("SEQSERVE_ADDRESS", "0.0.0.0:50051"),
    "--repository": ("SEQSERVE_REPOSITORY", None),
    "--session-ttl": ("SEQSERVE_SESSION_TTL", 900.0),
    "--max-sessions": ("SEQSERVE_MAX_SESSIONS", 100_000),
    "--max-batch": ("SEQSERVE_MAX_BATCH", 1024),
    "--batch-delay-us": ("SEQSERVE_BATCH_DELAY_US", 0),
    "--max-steps-per-request": ("SEQSERVE_MAX_STEPS_PER_REQUEST", 4096),
    "--max-queue": ("SEQSERVE_MAX_QUEUE", 65536),
    "--max-message-bytes": ("SEQSERVE_MAX_MESSAGE_BYTES", 4_194_304),
    "--max-streams": ("SEQSERVE_MAX_STREAMS", 10_000),
    "--grace-period": ("SEQSERVE_GRACE_PERIOD", 10.0),
    "--ort-threads": ("SEQSERVE_ORT_THREADS", 1),
    "--store": ("SEQSERVE_STORE", "memory"),
    "--auth-tokens": ("SEQSERVE_AUTH_TOKENS", ""),
    "--tls-cert": ("SEQSERVE_TLS_CERT", ""),
    "--tls-key": ("SEQSERVE_TLS_KEY", ""),
    "--tls-client-ca": ("SEQSERVE_TLS_CLIENT_CA", ""),
    "--admin-principals": ("SEQSERVE_ADMIN_PRINCIPALS", ""),
    "--kserve-address": ("SEQSERVE_KSERVE_ADDRESS", ""),
    "--health-address": ("SEQSERVE_HEALTH_ADDRESS", ""),
    "--max-sessions-per-principal": ("SEQSERVE_MAX_SESSIONS_PER_PRINCIPAL", 0),
    "--reload-interval": ("SEQSERVE_RELOAD_INTERVAL", 0.0),
    "--metrics-address": ("SEQSERVE_METRICS_ADDRESS", ""),
    "--log-level": ("SEQSERVE_LOG_LEVEL", "info"),
    "--log-format": ("SEQSERVE_LOG_FORMAT", "text"),
    "--access-log": ("SEQSERVE_ACCESS_LOG", False),
}


def parse(argv: list[str], environ: dict[str, str]) -> ServerSettings:
    parser = argparse.ArgumentParser()
    ServerSettings.add_arguments(parser)
    return ServerSettings.from_sources(parser.parse_args(argv), environ)


def test_flags_variables_and_defaults_are_the_documented_ones() -> None:
    parser = argparse.ArgumentParser()
    ServerSettings.add_arguments(parser)
    help_text = parser.format_help()
    defaults = ServerSettings()
    for f in fields(ServerSettings):
        flag = f.metadata["flag"]
        env, default = DOCUMENTED[flag]
        assert flag in help_text and env in help_text
        if default is not None:
            assert getattr(defaults, f.name) == default, flag
    assert len(fields(ServerSettings)) == len(DOCUMENTED)
    assert defaults.repository == Path(__file__).resolve().parents[2] / "models" / "repository"


def test_flag_beats_variable_beats_default(tmp_path: Path) -> None:
    settings = parse(
        ["--max-batch", "7", "--repository", str(tmp_path)],
        {
            "SEQSERVE_MAX_BATCH": "9",
            "SEQSERVE_SESSION_TTL": "30.5",
            "SEQSERVE_LOG_LEVEL": "DEBUG",
            "SEQSERVE_ADDRESS": "[::]:0",
        },
    )
    assert settings.max_batch == 7
    assert settings.session_ttl_s == 30.5
    assert settings.log_level == "debug"
    assert settings.address == "[::]:0"
    assert settings.repository == tmp_path
    assert settings.max_sessions == CoreSettings().max_sessions
    core = settings.core()
    assert (core.max_batch, core.session_ttl_s) == (7, 30.5)


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--max-batch", "0", "expected an integer >= 1, got '0'"),
        ("--session-ttl", "soon", "expected a number > 0, got 'soon'"),
        ("--grace-period", "-1", "expected a number >= 0, got '-1'"),
        ("--address", "50051", "expected HOST:PORT"),
        ("--metrics-address", "9090", "expected HOST:PORT"),
        ("--log-format", "xml", "expected one of text, json, got 'xml'"),
        ("--auth-tokens", "/no/such/file", "expected a file"),
        ("--access-log", "maybe", "expected on or off, got 'maybe'"),
        ("--log-level", "loud", "expected one of debug, info, warning, error, got 'loud'"),
        ("--repository", "/no/such/folder", "expected a model repository folder"),
    ],
)
def test_bad_flag_exits_2_naming_expected_and_got(
    flag: str, value: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve", flag, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and expected in err


def test_bad_variable_exits_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SEQSERVE_MAX_SESSIONS", "many")
    assert cli.main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "SEQSERVE_MAX_SESSIONS: expected an integer >= 1, got 'many'" in err


def test_from_sources_raises_settings_error_for_a_bad_variable() -> None:
    with pytest.raises(SettingsError, match="SEQSERVE_GRACE_PERIOD: expected a number >= 0"):
        ServerSettings.from_sources(None, {"SEQSERVE_GRACE_PERIOD": "nan"})
