"""`ray-backup config check`: every problem on its own line naming the setting, exit 2."""

from __future__ import annotations

import base64
import dataclasses

import pytest

from ray_backup.cli import EXIT_OK, EXIT_USAGE, main
from ray_backup.settings import CONFIG_ENV, Settings

KEY = base64.b64encode(bytes(range(32))).decode()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """Only the file under test speaks: no setting comes from this shell."""
    for f in dataclasses.fields(Settings):
        monkeypatch.delenv(f.metadata["env"], raising=False)
    monkeypatch.delenv(CONFIG_ENV, raising=False)


def check(tmp_path, capsys, text: str | None):
    args = ["config", "check"]
    if text is not None:
        path = tmp_path / "ray-backup.yaml"
        path.write_text(text)
        args += ["--config", str(path)]
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err.splitlines()


def test_a_good_file_is_ok_and_its_values_are_shown_with_secrets_masked(tmp_path, capsys):
    code, out, err = check(tmp_path, capsys, f"""
CONFIG_BACKUP_INTERVAL: 3600
config_backup_max_concurrent: 4        # lower-case names work too
device_refresh: 30                     # and the field names
DATABASE_URL: postgresql://backup:hunter2@db.example.net/network
CREDENTIAL_ENCRYPTION_KEY: {KEY}
RAY_BACKUP_LOG_LEVEL: debug
""")
    assert code == EXIT_OK and err == ["config ok"]
    shown = dict(line.split("=", 1) for line in out.splitlines())
    assert shown["CONFIG_BACKUP_INTERVAL"] == "3600.0"
    assert shown["CONFIG_BACKUP_MAX_CONCURRENT"] == "4"
    assert shown["DEVICE_REFRESH_SECONDS"] == "30.0"
    assert shown["RAY_BACKUP_LOG_LEVEL"] == "DEBUG"
    assert shown["DATABASE_URL"] == shown["CREDENTIAL_ENCRYPTION_KEY"] == "***"
    assert "hunter2" not in out and KEY not in out


def test_no_file_checks_the_defaults(tmp_path, capsys):
    code, out, _err = check(tmp_path, capsys, None)
    assert code == EXIT_OK and "CONFIG_BACKUP_INTERVAL=21600.0" in out.splitlines()


def test_every_problem_is_one_line_naming_its_setting(tmp_path, capsys):
    code, out, err = check(tmp_path, capsys, """
CONFIG_BACKUP_INTERVAL: -5
CONFIG_BACKUP_MAX_CONCURRENT: lots
RAY_BACKUP_METRICS_PORT: 70000
CREDENTIAL_ENCRYPTION_KEY: c2hvcnQ=
RAY_BACKUP_LOG_LEVEL: chatty
""")
    assert code == EXIT_USAGE and out == ""
    assert len(err) == 5, err
    expected = {
        "CONFIG_BACKUP_INTERVAL": "must be greater than 0",
        "CONFIG_BACKUP_MAX_CONCURRENT": "must be a number",
        "RAY_BACKUP_METRICS_PORT": "must be a port number",
        "CREDENTIAL_ENCRYPTION_KEY": "must decode to 32 bytes",
        "RAY_BACKUP_LOG_LEVEL": "must be one of",
    }
    for name, reason in expected.items():
        (line,) = [line for line in err if f": {name}: " in line]
        assert line.startswith("error: ") and reason in line, line
    # The secret's line says what is wrong without repeating the value.
    (key_line,) = [line for line in err if "CREDENTIAL_ENCRYPTION_KEY" in line]
    assert "c2hvcnQ=" not in key_line and "hidden" in key_line


def test_settings_that_disagree_are_reported_together(tmp_path, capsys):
    code, _, err = check(tmp_path, capsys, """
CONFIG_BACKUP_JITTER_MIN: 100
CONFIG_BACKUP_JITTER_MAX: 10
KAFKA_SASL_USERNAME: ray-backup
""")
    assert code == EXIT_USAGE and len(err) == 2, err
    assert any("CONFIG_BACKUP_JITTER_MAX" in line and "CONFIG_BACKUP_JITTER_MIN" in line for line in err)
    assert any("KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD" in line for line in err)


def test_an_unknown_key_is_named(tmp_path, capsys):
    code, _, err = check(tmp_path, capsys, "CONFIG_BACKUP_INTERVAL: 60\nCONFIG_BAKCUP_TIMEOUT: 5\n")
    assert code == EXIT_USAGE
    assert len(err) == 1 and "unknown setting 'CONFIG_BAKCUP_TIMEOUT'" in err[0]


def test_bad_yaml_says_where(tmp_path, capsys):
    code, _, err = check(tmp_path, capsys, "CONFIG_BACKUP_INTERVAL: 60\nKAFKA_TOPIC: [unclosed\n")
    assert code == EXIT_USAGE
    assert len(err) == 1 and "not valid YAML" in err[0] and "line" in err[0], err


def test_a_file_that_is_not_a_mapping_is_refused(tmp_path, capsys):
    code, _, err = check(tmp_path, capsys, "- CONFIG_BACKUP_INTERVAL\n- 60\n")
    assert code == EXIT_USAGE and len(err) == 1 and "must be a mapping" in err[0]


def test_a_missing_file_is_one_line(tmp_path, capsys):
    code = main(["config", "check", "--config", str(tmp_path / "nope.yaml")])
    err = capsys.readouterr().err.splitlines()
    assert code == EXIT_USAGE and len(err) == 1 and "cannot read config file" in err[0]


def test_the_environment_wins_over_the_file_and_is_checked_too(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CONFIG_BACKUP_COMMAND_TIMEOUT", "soon")
    code, _, err = check(tmp_path, capsys, "CONFIG_BACKUP_COMMAND_TIMEOUT: 30\n")
    assert code == EXIT_USAGE
    assert err == ["error: CONFIG_BACKUP_COMMAND_TIMEOUT: must be a number (got 'soon')"]
