"""What the driver hands its actors: settings without secrets, and a warning when they lack one."""

from ray_backup import job
from ray_backup.settings import Settings

KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="


def test_actor_env_forwards_settings_but_never_secrets(monkeypatch, tmp_path):
    for name, value in {
        "REDIS_URL": "redis://:pw@r:6379/0", "DATABASE_URL": "postgresql://u:pw@db/app",
        "CREDENTIAL_ENCRYPTION_KEY": KEY, "KAFKA_SASL_PASSWORD": "pw", "OPENBAO_TOKEN": "t",
        "CONFIG_BACKUP_INTERVAL": "600", "KAFKA_BOOTSTRAP_SERVERS": "k:9092",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    env = job.actor_env({"inventory": "devices.yaml", "output": None, "config": None})
    assert env["CONFIG_BACKUP_INTERVAL"] == "600" and env["KAFKA_BOOTSTRAP_SERVERS"] == "k:9092"
    assert env["RAY_BACKUP_INVENTORY"] == str(tmp_path / "devices.yaml")
    for secret in ("REDIS_URL", "DATABASE_URL", "CREDENTIAL_ENCRYPTION_KEY", "KAFKA_SASL_PASSWORD",
                   "OPENBAO_TOKEN"):
        assert secret not in env


def test_driver_names_the_secrets_its_actors_do_not_see():
    settings = Settings.load(environ={"REDIS_URL": "redis://r:6379/0", "CREDENTIAL_ENCRYPTION_KEY": KEY})
    assert job.unseen_secrets(settings, ["REDIS_URL"]) == ["CREDENTIAL_ENCRYPTION_KEY"]
    assert job.unseen_secrets(settings, ["REDIS_URL", "CREDENTIAL_ENCRYPTION_KEY"]) == []
