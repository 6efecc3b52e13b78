"""RouterOS normalization, hashing and validation, driven by the real device captures."""

import hashlib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ray_backup.drivers.base import decode_output, sha256_hex
from ray_backup.drivers.routeros import DRIVER, export_command, parse_version
from ray_backup.errors import InvalidOutput
from ray_backup.simulator.captures import available_captures, load_capture
from ray_backup.simulator.rosconfig import unwrap, wrap

CAPTURES = [name for name in available_captures()]
HEADER = re.compile(r"\A# [^\n]* by RouterOS [^\n]*\n")


def export_of(name):
    return load_capture(name).export


def digest(text):
    return sha256_hex(DRIVER.normalize(text))


def with_header(text, header):
    return HEADER.sub(header + "\n", text, count=1)


def rewrap(text, width):
    lines = text.split("\n")
    body_start = next(i for i, line in enumerate(lines) if line.startswith("/"))
    joined = unwrap("\n".join(lines[body_start:]))
    wrapped = "\n".join(wrap(line, width) if line else line for line in joined.split("\n"))
    return "\n".join(lines[:body_start]) + "\n" + wrapped


@pytest.mark.parametrize("name", CAPTURES)
def test_export_date_and_release_do_not_change_the_hash(name):
    text = export_of(name)
    variants = [
        text,
        with_header(text, "# 2031-01-02 03:04:05 by RouterOS 7.99.1"),
        with_header(text, "# jan/02/2024 10:20:30 by RouterOS 6.49.10"),
        with_header(text, "# 2024-10-25 06:08:35 by RouterOS 7.10.1\n"),  # blank line after
        text.replace("\n", "\r\n"),
        text.replace("\n", "   \n") + "\n\n\n",
    ]
    assert len({digest(v) for v in variants}) == 1


@pytest.mark.parametrize("name", CAPTURES)
def test_wrap_width_does_not_change_the_hash(name):
    text = export_of(name)
    assert digest(rewrap(text, 200)) == digest(text) == digest(rewrap(text, 60))


@pytest.mark.parametrize("name", CAPTURES)
def test_a_real_change_changes_the_hash(name):
    text = export_of(name)
    last_add = [line for line in text.split("\n") if line.startswith(("add ", "set "))][-1]
    changed = text.replace(last_add, last_add + " comment=changed", 1)
    assert digest(changed) != digest(text)
    assert digest(text + "\n/ip service\nset telnet disabled=yes\n") != digest(text)


@pytest.mark.parametrize("name", CAPTURES)
def test_normalized_export_is_valid_stable_and_keeps_the_configuration(name):
    text = export_of(name)
    DRIVER.validate(text)
    normalized = DRIVER.normalize(text)
    assert DRIVER.normalize(normalized) == normalized
    assert normalized.endswith("\n") and not normalized.endswith("\n\n")
    assert "by RouterOS" not in normalized and "\\\n" not in normalized
    assert "# software id" in normalized  # stable header lines stay
    for line in unwrap(text).split("\n"):
        if line.startswith("/"):
            assert line.rstrip() in normalized


def test_transient_comments_are_dropped():
    text = export_of("RB5009UPrplusSplus_7.18.2")
    assert "# poe-out status: voltage_on_poe-in" in text
    normalized = DRIVER.normalize(text)
    assert "poe-out status" not in normalized
    flapping = text.replace(
        "/interface list\n", "/interface list\n# sfp-sfpplus1 not ready\n# inactive time\n", 1
    )
    assert digest(flapping) == digest(text)


def test_hash_is_lowercase_sha256_hex_of_normalized_utf8():
    text = "/system identity\nset name=r\u00e9\n"
    assert sha256_hex(text) == hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert sha256_hex(text) == sha256_hex(text).lower() and len(sha256_hex(text)) == 64


@pytest.mark.parametrize(
    "output, reason",
    [
        ("", "empty"),
        ("   \r\n\r\n", "empty"),
        ("expected end of command (line 1 column 9)\r\n", "error"),
        ("bad command name export (line 1 column 2)", "error"),
        ("\x00\x01\x02\xff garbage" * 50, "binary"),
        ("Welcome to the router\r\n\x1b[1mMikroTik\x1b[0m\r\n", "no RouterOS menu line"),
        ("# 2024-10-25 06:08:35 by RouterOS 7.16\n/interface bridge\nadd name=a \\\n", "wrapped"),
    ],
)
def test_non_configurations_are_rejected(output, reason):
    with pytest.raises(InvalidOutput, match=reason):
        DRIVER.validate(output)


def test_ansi_escapes_are_stripped():
    text = export_of("CHR_7.16")
    colored = "\x1b[9999B" + text.replace("/interface", "\x1b[1;36m/interface\x1b[0m")
    assert digest(colored) == digest(text)


def test_export_command_by_version_and_mode():
    assert export_command("7.16", "show-sensitive") == "/export show-sensitive"
    assert export_command("6.49.10", "show-sensitive") == "/export"
    assert export_command("7.16", "hide-sensitive") == "/export hide-sensitive"
    assert export_command(None, "hide-sensitive") == "/export hide-sensitive"
    assert export_command("6.49.10", "hide-sensitive") == "/export hide-sensitive"


@pytest.mark.parametrize("name", CAPTURES)
def test_version_is_read_from_resource_print_and_export_header(name):
    capture = load_capture(name)
    assert parse_version(capture.commands["/system resource print"]) == capture.version
    assert parse_version(capture.export) == capture.version


def test_legacy_bytes_decode():
    assert decode_output("é".encode()) == "é"
    assert decode_output(b"comment=caf\xe9") == "comment=café"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=400))
def test_normalize_never_fails_and_output_is_tidy(text):
    out = DRIVER.normalize(text)
    assert "\r" not in out
    assert out == "" or (out.endswith("\n") and not out.endswith("\n\n"))
    assert all(line == line.rstrip() for line in out.split("\n"))
    reason = DRIVER.reject_reason(text)
    assert reason is None or isinstance(reason, str)


def _line_ends_by_regex(text):
    """The line-end rule as first written: one regex, then any lone CR."""
    return re.sub(r"\r+\n", "\n", text).replace("\r", "\n")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["\r", "\n", "\r\n", "\r\r\n", " ", "a", "/ip", "\\"]),
                max_size=60).map("".join))
def test_line_ends_match_the_regex_rule_with_or_without_double_cr(text):
    # normalize takes a fast path without "\r\r"; both paths must hash like the regex rule.
    expected = DRIVER.normalize(_line_ends_by_regex(text))
    assert DRIVER.normalize(text) == expected


@pytest.mark.parametrize("ends", ["\r\n", "\r\r\n", "\r", "\n\r"])
def test_pty_line_ends_are_one_line_end(ends):
    text = "/interface\nset ether1 name=wan\n\n/ip address\nadd address=10.0.0.1/24\n"
    assert DRIVER.normalize(text.replace("\n", ends)) == DRIVER.normalize(
        _line_ends_by_regex(text.replace("\n", ends)))
