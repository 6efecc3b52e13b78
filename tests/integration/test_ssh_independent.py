"""Collection against an SSH server we did not write (asyncssh), modern and RouterOS 6 profiles.

Every other SSH test talks to the simulator, which is paramiko like the client; these show
the client interoperates with an independent implementation, allows the legacy algorithms
only when told to, and keeps host keys pinned across algorithm changes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import uuid
import warnings

import asyncssh
import paramiko
import pytest
import yaml

from ray_backup import errors
from ray_backup.backup import Collector
from ray_backup.credentials.resolver import CredentialResolver
from ray_backup.inventory.yamlfile import YamlInventory
from ray_backup.models import Credentials
from ray_backup.runtime import ssh_options
from ray_backup.settings import Settings
from ray_backup.sinks.directory import DirectorySink
from ray_backup.transport import algorithms, ssh
from ray_backup.transport.ssh import SSHOptions, SSHSession
from tests.support.independent_ssh import MODERN, ROUTEROS6, IndependentSSHServer

PROFILES = [MODERN, ROUTEROS6]
LEGACY_ENV = {"RAY_BACKUP_SSH_LEGACY_ALGORITHMS": "1"}

# asyncssh warns that finite-field Diffie-Hellman is deprecated: the legacy profile uses it.
pytestmark = pytest.mark.filterwarnings("ignore:Diffie-Hellman over finite fields")


@pytest.fixture
def server():
    started = []

    def start(profile=MODERN, **kwargs) -> IndependentSSHServer:
        started.append(IndependentSSHServer(profile, **kwargs).start())
        return started[-1]

    yield start
    for one in started:
        one.stop()


@pytest.fixture(autouse=True)
def fresh_process():
    """Each test as a new process would see it: no host key types learnt before."""
    ssh._KEY_TYPES.clear()
    yield
    ssh._KEY_TYPES.clear()


@pytest.fixture
def backup(tmp_path):
    """Back up the one device of ``inventory`` as the job does; returns (result, device)."""

    def run(inventory, env=None):
        settings = Settings.load(environ={"CONFIG_BACKUP_CONNECT_TIMEOUT": "3",
                                          "CONFIG_BACKUP_COMMAND_TIMEOUT": "5", **(env or {})})
        source = YamlInventory(inventory)
        collector = Collector(
            credentials=CredentialResolver(settings),
            sink=DirectorySink(tmp_path / "out"),
            options=ssh_options(settings),
            record_host_key=source.record_host_key,
        )
        return collector.backup(source.load().devices[0])

    return run


def inventory_for(tmp_path, srv: IndependentSSHServer, **fields) -> object:
    row = {"id": str(uuid.uuid4()), "host": "127.0.0.1", "port": srv.port,
           "username": "admin", "password": "secret", **fields}
    path = tmp_path / "devices.yaml"
    path.write_text(yaml.safe_dump({"devices": [{k: v for k, v in row.items() if v is not None}]}))
    return path


def ssh_keygen_fingerprint(public_key_line: str, tmp_path) -> str:
    """``ssh-keygen -lf``'s fingerprint of a public key, computed without our code."""
    path = tmp_path / "host_key.pub"
    path.write_text(public_key_line)
    blob = base64.b64decode(public_key_line.split()[1])
    ours = "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    if shutil.which("ssh-keygen"):
        printed = subprocess.run(["ssh-keygen", "-lf", str(path)], capture_output=True,
                                 text=True, check=True).stdout.split()[1]
        assert printed == ours
    return ours


def public_line(key: asyncssh.SSHKey) -> str:
    return key.export_public_key("openssh").decode()


# --- both profiles -----------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_password_login_backs_up_and_stores_the_ssh_keygen_fingerprint(
        server, backup, tmp_path, profile):
    srv = server(profile)
    inventory = inventory_for(tmp_path, srv)
    result, device = backup(inventory, LEGACY_ENV if profile is ROUTEROS6 else None)
    assert result.ok, result
    assert device.host_key_fingerprint == ssh_keygen_fingerprint(public_line(srv.host_keys[0]), tmp_path)
    assert YamlInventory(inventory).load().devices[0].host_key_fingerprint == device.host_key_fingerprint
    event = json.loads((tmp_path / "out" / "snapshots.jsonl").read_text().splitlines()[-1])
    assert event["routeros_version"] == profile.version
    # RouterOS 6 shows secrets by default and refuses show-sensitive: the right export was asked for.
    assert srv.commands[-1] == ("/export" if profile is ROUTEROS6 else "/export show-sensitive")
    # The second backup checks the stored key and trusts nothing new.
    again, known = backup(inventory, LEGACY_ENV if profile is ROUTEROS6 else None)
    assert again.ok and again.sha256_hash == result.sha256_hash
    assert known.host_key_fingerprint == device.host_key_fingerprint


@pytest.mark.parametrize("profile, key_type", [(MODERN, "ssh-ed25519"), (ROUTEROS6, "ssh-rsa")],
                         ids=["modern-ed25519", "routeros6-rsa"])
def test_key_login(server, backup, tmp_path, profile, key_type):
    user_key = asyncssh.generate_private_key(key_type)
    key_file = tmp_path / "id_user"
    key_file.write_bytes(user_key.export_private_key("openssh"))
    srv = server(profile, password=None, authorized_keys=public_line(user_key))
    inventory = inventory_for(tmp_path, srv, password=None, key_file=str(key_file),
                              ssh_legacy_algorithms=profile is ROUTEROS6)
    result, _ = backup(inventory)
    assert result.ok, result
    assert srv.password_attempts == 0


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_wrong_password_is_auth_failed(server, backup, tmp_path, profile):
    srv = server(profile)
    result, _ = backup(inventory_for(tmp_path, srv, password="wrong"), LEGACY_ENV)
    assert (result.error_kind, srv.commands) == (errors.AUTH_FAILED, [])
    assert srv.password_attempts >= 1 and "wrong" not in result.error


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_changed_host_key_is_a_mismatch_and_no_password_is_sent(server, backup, tmp_path, profile):
    srv = server(profile)
    inventory = inventory_for(tmp_path, srv)
    assert backup(inventory, LEGACY_ENV)[0].ok
    stored = YamlInventory(inventory).load().devices[0].host_key_fingerprint
    attempts = srv.password_attempts
    srv.restart([asyncssh.generate_private_key(t) for t in profile.host_key_types])
    result, _ = backup(inventory, LEGACY_ENV)
    assert result.error_kind == errors.HOST_KEY_MISMATCH, result
    assert f"stored {stored}" in result.error
    assert srv.password_attempts == attempts


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
@pytest.mark.parametrize("ending", ["no_exit_status", "drop"])
def test_export_without_exit_status_is_truncated_output(server, backup, tmp_path, profile, ending):
    srv = server(profile)
    srv.ending = ending
    result, _ = backup(inventory_for(tmp_path, srv), LEGACY_ENV)
    assert result.error_kind == errors.TRUNCATED_OUTPUT, result


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_the_exit_status_the_server_reports_completes_the_export(server, tmp_path, profile):
    srv = server(profile)
    with SSHSession("127.0.0.1", srv.port, Credentials("admin", "secret"), None,
                    SSHOptions(connect_timeout=3, command_timeout=5, legacy_algorithms=True)) as session:
        output = session.run("/system resource print")
        assert f"version: {profile.version} ".encode() in output
        srv.ending = "no_exit_status"
        with pytest.raises(errors.TruncatedOutput, match="connection lost during '/export"):
            session.run("/export" if profile is ROUTEROS6 else "/export show-sensitive")


# --- legacy algorithms: only when allowed --------------------------------------------------


def test_routeros6_device_needs_the_legacy_setting(server, backup, tmp_path):
    srv = server(ROUTEROS6)
    inventory = inventory_for(tmp_path, srv)
    result, _ = backup(inventory)
    assert result.error_kind == errors.SSH_INCOMPATIBLE, result
    for offered in ("diffie-hellman-group14-sha1", "host key ssh-rsa", "hmac-sha1",
                    "RAY_BACKUP_SSH_LEGACY_ALGORITHMS=1", "ssh_legacy_algorithms"):
        assert offered in result.error
    assert (srv.password_attempts, srv.commands) == (0, [])
    assert backup(inventory, LEGACY_ENV)[0].ok  # allowed globally
    per_device = inventory_for(tmp_path, srv, ssh_legacy_algorithms=True)
    assert backup(per_device)[0].ok  # or for this device only


# Where both sides still have the legacy set, and the server even prefers it.
EVERYTHING_LEGACY_FIRST = {
    "kex_algs": ["diffie-hellman-group1-sha1", "diffie-hellman-group14-sha1",
                 "diffie-hellman-group-exchange-sha1", "curve25519-sha256", "ecdh-sha2-nistp256"],
    "encryption_algs": ["aes128-cbc", "3des-cbc", "aes256-cbc", "aes128-ctr"],
    "mac_algs": ["hmac-md5", "hmac-sha1", "hmac-sha1-96", "hmac-md5-96", "hmac-sha2-256"],
}


def test_a_device_not_allowed_legacy_never_negotiates_any_of_it(server, tmp_path):
    # An RSA host key, so ssh-rsa signatures are offered too.
    srv = server(MODERN, host_keys=[asyncssh.generate_private_key("ssh-rsa")],
                 algorithms=EVERYTHING_LEGACY_FIRST)
    # The library still has every one of them.
    library = {"kex": paramiko.Transport._preferred_kex, "keys": paramiko.Transport._preferred_keys,
               "ciphers": paramiko.Transport._preferred_ciphers, "macs": paramiko.Transport._preferred_macs}
    for category, names in library.items():
        assert any(algorithms.is_legacy(category, n) for n in names), category
    options = SSHOptions(connect_timeout=3, command_timeout=5)
    with SSHSession("127.0.0.1", srv.port, Credentials("admin", "secret"), None, options) as session:
        agreed = session.negotiated
        session.run("/system resource print")
        transport = session._transport
        offered_by_us = {"kex": transport.preferred_kex, "keys": transport.preferred_keys,
                         "pubkeys": transport.preferred_pubkeys,
                         "ciphers": transport.preferred_ciphers, "macs": transport.preferred_macs}
    assert agreed["kex"] and agreed["keys"] and agreed["ciphers"] and agreed["macs"]
    for category, value in agreed.items():
        for name in value.split(","):
            assert not algorithms.is_legacy(category, name), (category, name)
    for category, names in offered_by_us.items():
        assert [n for n in names if algorithms.is_legacy(category, n)] == [], category
    # The server's own view of the session agrees.
    assert srv.negotiated == [{"recv_cipher": "aes128-ctr", "recv_mac": "hmac-sha2-256"}]


@pytest.mark.parametrize("only, offered", [
    ({"kex_algs": ["diffie-hellman-group14-sha1"]}, "key exchange diffie-hellman-group14-sha1"),
    ({"kex_algs": ["diffie-hellman-group-exchange-sha1"]}, "diffie-hellman-group-exchange-sha1"),
    ({"signature_algs": ["ssh-rsa"]}, "host key ssh-rsa"),
    ({"encryption_algs": ["aes128-cbc", "3des-cbc"]}, "ciphers aes128-cbc, 3des-cbc"),
    ({"mac_algs": ["hmac-sha1", "hmac-md5"]}, "MACs hmac-sha1, hmac-md5"),
], ids=["kex-group14-sha1", "kex-gex-sha1", "ssh-rsa", "cbc", "hmac-sha1-md5"])
def test_each_legacy_category_is_refused_unless_allowed(server, backup, tmp_path, only, offered):
    """One category legacy-only, the rest modern: refused, then allowed per device."""
    srv = server(MODERN, host_keys=[asyncssh.generate_private_key("ssh-rsa")], algorithms=only)
    result, _ = backup(inventory_for(tmp_path, srv))
    assert result.error_kind == errors.SSH_INCOMPATIBLE, result
    assert offered in result.error and "RAY_BACKUP_SSH_LEGACY_ALGORITHMS=1" in result.error
    assert srv.password_attempts == 0
    allowed, _ = backup(inventory_for(tmp_path, srv, ssh_legacy_algorithms=True))
    assert allowed.ok, allowed


def test_nothing_in_common_even_with_legacy_says_so(server, backup, tmp_path):
    srv = server(MODERN, algorithms={"encryption_algs": ["arcfour"]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result, _ = backup(inventory_for(tmp_path, srv), LEGACY_ENV)
    assert result.error_kind == errors.SSH_INCOMPATIBLE
    assert "ciphers arcfour" in result.error and "not supported by this client" in result.error


# --- host keys across algorithm changes ----------------------------------------------------


def test_ed25519_added_next_to_the_stored_rsa_key_is_no_mismatch(server, backup, tmp_path):
    rsa = asyncssh.generate_private_key("ssh-rsa")
    srv = server(MODERN, host_keys=[rsa])
    inventory = inventory_for(tmp_path, srv)
    first, device = backup(inventory)
    assert first.ok, first
    stored = device.host_key_fingerprint
    assert stored == ssh_keygen_fingerprint(public_line(rsa), tmp_path)
    # The device is upgraded and now offers ed25519 too, which the client prefers.
    srv.restart([rsa, asyncssh.generate_private_key("ssh-ed25519")])
    before = srv.connections
    result, known = backup(inventory)
    assert result.ok, result
    assert known.host_key_fingerprint == stored
    assert srv.connections - before == 2  # ed25519 presented, then the RSA key asked for
    # The key type is now known: the next session asks for RSA straight away.
    before = srv.connections
    assert backup(inventory)[0].ok
    assert srv.connections - before == 1


def test_a_replaced_key_next_to_a_new_one_is_still_a_mismatch(server, backup, tmp_path):
    srv = server(MODERN, host_keys=[asyncssh.generate_private_key("ssh-rsa")])
    inventory = inventory_for(tmp_path, srv)
    assert backup(inventory)[0].ok
    srv.restart([asyncssh.generate_private_key("ssh-rsa"), asyncssh.generate_private_key("ssh-ed25519")])
    result, _ = backup(inventory)
    assert result.error_kind == errors.HOST_KEY_MISMATCH, result
    assert "nor any of its other host keys: ssh-rsa" in result.error
    assert srv.password_attempts == 1  # only the first, trusting backup logged in


# --- as a benchmark fleet: padded, delayed exports; servers sharing one event loop ----------


def test_padded_delayed_exports_from_servers_sharing_one_loop(backup, tmp_path):
    import asyncio
    import threading
    import time

    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    servers = [IndependentSSHServer(MODERN, export_bytes=45_000, export_delay=0.5, loop=loop).start()
               for _ in range(2)]
    try:
        assert len({s.port for s in servers}) == 2
        for srv in servers:
            client = paramiko.SSHClient()
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
            client.connect("127.0.0.1", srv.port, "admin", "secret", look_for_keys=False,
                           allow_agent=False, timeout=10)
            try:
                started = time.monotonic()
                _, stdout, _ = client.exec_command("/export show-sensitive")
                export = stdout.read()
                assert time.monotonic() - started >= 0.5
                _, stdout, _ = client.exec_command("/system resource print")
                assert b"version: 7.16" in stdout.read()
            finally:
                client.close()
            assert 45_000 <= len(export) < 46_000 and export.endswith(b"\r\n")
            assert b"\r\n/ip firewall address-list\r\n" in export
        # The padded export is a configuration ray-backup takes as it is.
        result, _ = backup(inventory_for(tmp_path, servers[0]))
        assert result.ok, result
    finally:
        for srv in servers:
            srv.stop()
        loop.call_soon_threadsafe(loop.stop)
        runner.join(10)
        loop.close()
