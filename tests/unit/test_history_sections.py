"""Section summaries and diffs on real RouterOS captures with edits applied."""

import pytest

from ray_backup.history.diffing import unified_diff
from ray_backup.history.sections import component_of, summarize
from tests.support.history import capture_text, insert_after


def edit(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new, 1)


@pytest.fixture
def l009():
    return capture_text("L009UiGS_7.15.2")


def summaries(old: str, new: str) -> list[tuple[str, str]]:
    return [(s.component, s.summary) for s in summarize(old, new)]


def test_component_of_a_menu_line():
    assert component_of("/ip firewall filter") == "ip/firewall/filter"
    assert component_of("/interface  wireless security-profiles ") == \
        "interface/wireless/security-profiles"


def test_added_rules_far_below_their_menu_line_keep_the_section(l009):
    # The hunk's context never reaches "/ip firewall filter": the section comes from the full text.
    lines = l009.splitlines()
    start, end = lines.index("/ip firewall filter"), lines.index("/ip firewall nat")
    last = max(i for i in range(start, end) if "chain=forward" in lines[i])
    added = ["add action=drop chain=forward comment=x1", "add action=drop chain=forward comment=x2"]
    new_lines = lines[:last + 1] + added + lines[last + 1:]
    new = "\n".join(new_lines) + "\n"
    diff = unified_diff(l009, new)
    assert "/ip firewall filter" not in diff.text
    assert summaries(l009, new) == [("ip/firewall/filter", "Added 2 filter rules")]
    assert (diff.lines_added, diff.lines_removed) == (2, 0)


def test_removed_address_and_modified_rule(l009):
    new = edit(l009, "add address=192.0.2.1/24 comment=defconf interface=bridge network=192.0.2.0\n", "")
    new = edit(new, 'action=drop chain=input comment="defconf: drop invalid"',
               'action=reject chain=input comment="defconf: drop invalid"')
    assert summaries(l009, new) == [
        ("ip/address", "Removed 1 address"),
        ("ip/firewall/filter", "Modified 1 filter rule"),
    ]


def test_set_lines_with_the_same_target_are_modified():
    old = capture_text("RB5009UPrplusSplus_7.18.2")
    new = edit(old, "set [ find default-name=ether3 ] mtu=1514", "set [ find default-name=ether3 ] mtu=9000")
    new = edit(new, "set allow-remote-requests=yes", "set allow-remote-requests=no")
    assert summaries(old, new) == [("interface/ethernet", "Modified 1 ethernet interface"),
                                   ("ip/dns", "Modified 1 setting line")]


def test_a_renamed_item_moved_elsewhere_in_its_section_is_modified(l009):
    new = edit(l009, "add comment=defconf name=WAN\n", "")
    new = edit(new, "add comment=defconf name=LAN\n",
               "add comment=defconf name=LAN\nadd comment=wan name=WAN\n")
    assert summaries(l009, new) == [("interface/list", "Modified 1 interface list")]


def test_a_new_section_and_a_settings_change(l009):
    new = insert_after(l009, "/ip dns static", "add address=192.0.2.9 name=nas.lan")
    new = new.replace("/system note\n", "/snmp community\nadd name=ops\n/system note\n", 1)
    found = summaries(l009, new)
    assert ("ip/dns/static", "Added 1 static DNS entry") in found
    assert ("snmp/community", "Added 1 SNMP community") in found


def test_raw_line_is_one_changed_line_with_secrets_masked(l009):
    new = edit(l009, "password=password", "password=n3w-s3cret")
    change, = summarize(l009, new)
    assert change.component == "interface/pppoe-client"
    assert change.raw_line.startswith("+add ") and "password=***" in change.raw_line
    assert "n3w-s3cret" not in change.raw_line


def test_every_capture_against_itself_has_no_changes():
    for name in ("CHR_7.10.1", "CHR_7.16", "L009UiGS_7.15.2", "RB5009UPrplusSplus_7.18.2"):
        text = capture_text(name)
        assert summarize(text, text) == ()
        assert unified_diff(text, text).text == ""


def test_diff_counts_changed_lines_not_headers():
    diff = unified_diff("a\n-- b\nc\n", "a\n++ b\nc\nd\n", "old", "new")
    assert diff.text.splitlines()[:2] == ["--- old", "+++ new"]
    assert (diff.lines_added, diff.lines_removed) == (2, 1)
