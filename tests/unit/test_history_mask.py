"""Secret values are masked wherever RouterOS prints them; nothing else is touched."""

import pytest

from ray_backup.history.mask import is_secret_key, mask_secrets
from tests.support.history import capture_text


@pytest.mark.parametrize("line, masked", [
    ("add name=u password=p1 service=pppoe", "add name=u password=*** service=pppoe"),
    ('set wpa2-pre-shared-key="a b\\" c" mode=dynamic-keys',
     'set wpa2-pre-shared-key="***" mode=dynamic-keys'),
    ("set wpa-pre-shared-key=abc", "set wpa-pre-shared-key=***"),
    ('+add public-key="pub" private-key="priv" preshared-key=psk',
     '+add public-key="pub" private-key="***" preshared-key=***'),
    ("add authentication-password=a1 encryption-password=\"e 1\" name=c",
     "add authentication-password=*** encryption-password=\"***\" name=c"),
    ("set static-key-0=abc static-sta-private-key=d", "set static-key-0=*** static-sta-private-key=***"),
    ("add secret=s1 address=10.0.0.1", "add secret=*** address=10.0.0.1"),
    ("add ipsec-secret=s1 tcp-md5-key=k auth-key=a authentication-key=b",
     "add ipsec-secret=*** tcp-md5-key=*** auth-key=*** authentication-key=***"),
    ("set security.passphrase=wifi-pass", "set security.passphrase=***"),
    ("add key=k1 key-id=3", "add key=*** key-id=3"),
    ('add name=s source="/tool fetch user=a password=b"',
     'add name=s source="/tool fetch user=a password=***"'),
    ("set always-allow-password-login=yes", "set always-allow-password-login=yes"),
    ("set host-key-size=2048 host-key-type=rsa", "set host-key-size=2048 host-key-type=rsa"),
    ("/ip dns set servers=1.1.1.1", "/ip dns set servers=1.1.1.1"),
    ("set password=", "set password="),
])
def test_masks_secret_values(line, masked):
    assert mask_secrets(line) == masked


def test_masks_a_value_broken_by_a_wrapped_line():
    wrapped = 'add name=vpn password=abc\\\n    def user=x\nadd password="long \\\n    value" user=y'
    assert mask_secrets(wrapped) == 'add name=vpn password=*** user=x\nadd password="***" user=y'


def test_public_names_are_not_secret():
    assert not is_secret_key("public-key") and not is_secret_key("comment")
    assert is_secret_key("wpa2-pre-shared-key") and is_secret_key("PASSWORD")


def test_real_capture_only_its_password_changes():
    text = capture_text()
    masked = mask_secrets(text)
    changed = [(a, b) for a, b in zip(text.splitlines(), masked.splitlines(), strict=True) if a != b]
    assert len(changed) == 1 and "password=***" in changed[0][1]
    assert "password=password" not in masked
