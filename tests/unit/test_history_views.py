"""The history views' logic and formatting, over a directory store in a temporary directory."""

from __future__ import annotations

import io

import pytest

from ray_backup.history import commands
from ray_backup.history.base import HistoryLookupError
from ray_backup.history.directory import DirectoryHistory
from ray_backup.history.views import HistoryViews, NoHistory, sectioned
from tests.support.history import at, snapshot

ROUTER_A = "a1b2c3d4-0000-4000-8000-000000000001"
ROUTER_B = "b1b2c3d4-0000-4000-8000-000000000002"
ROUTER_C = "c1b2c3d4-0000-4000-8000-000000000003"


CONFIG_1 = ("/interface wireless security-profiles\n"
            "set [ find default=yes ] wpa2-pre-shared-key=hunter22 mode=dynamic-keys\n"
            "/ip address\nadd address=10.0.0.1/24 interface=ether1\n"
            "/user\nadd name=backup password=s3cret group=read\n")
CONFIG_2 = CONFIG_1.replace("add address=10.0.0.1/24 interface=ether1\n",
                            "add address=10.0.0.1/24 interface=ether1\n"
                            "add address=10.0.0.2/24 interface=ether2\n")
CONFIG_3 = CONFIG_2.replace("password=s3cret", "password=n3w-s3cret")


@pytest.fixture
def store(tmp_path):
    s = DirectoryHistory(tmp_path)
    # Recent times (tests.support.history.at): the store's 90-day retention keeps them.
    for device, text, hours in [(ROUTER_A, CONFIG_1, 0), (ROUTER_A, CONFIG_2, 1),
                                (ROUTER_A, CONFIG_3, 2), (ROUTER_B, CONFIG_1, 0.001)]:
        s.store(snapshot(text, at(hours), device=device))
    yield s
    s.close()


NAMES = {ROUTER_A: "core-1", ROUTER_B: "edge-1", ROUTER_C: "edge-1"}


def test_a_device_is_named_by_id_or_by_a_unique_hostname(store):
    views = HistoryViews(store, NAMES)
    assert views.device(ROUTER_A) == views.device("core-1") == ROUTER_A
    with pytest.raises(HistoryLookupError, match="hostname of 2 devices"):
        views.device("edge-1")
    with pytest.raises(HistoryLookupError, match="no such device id or hostname"):
        views.device("nowhere")


def test_without_an_inventory_only_ids_name_devices_and_it_is_never_read_for_an_id(store):
    def unreadable():
        raise AssertionError("the inventory was read for a device given by id")

    assert HistoryViews(store, unreadable).versions(ROUTER_A)[0].lines_added == 1
    with pytest.raises(HistoryLookupError, match="in the history$"):
        HistoryViews(store).device("core-1")


def test_a_known_device_without_versions_is_no_history_not_bad_input(store):
    with pytest.raises(NoHistory, match="no configuration history"):
        HistoryViews(store, NAMES).versions(ROUTER_C)


def test_diff_defaults_to_the_last_two_versions_and_masks_secrets(store):
    change = HistoryViews(store).diff(ROUTER_A)
    assert change.old.collected_at == at(1)
    assert "-add name=backup password=*** group=read" in change.text
    assert "s3cret" not in change.text and "hunter22" not in change.text
    shown = HistoryViews(store, show_secrets=True).diff(ROUTER_A)
    assert "+add name=backup password=n3w-s3cret group=read" in shown.text


def test_diff_takes_ids_or_prefixes_and_new_defaults_to_the_newest(store):
    oldest, middle, newest = reversed(store.versions(ROUTER_A))
    views = HistoryViews(store)
    change = views.diff(ROUTER_A, oldest.snapshot_id[:8])
    assert (change.old, change.new) == (oldest, newest)
    change = views.diff(ROUTER_A, None, middle.snapshot_id)  # NEW alone: against the one before it
    assert (change.old, change.new) == (oldest, middle)
    assert "+add address=10.0.0.2/24 interface=ether2" in change.text
    with pytest.raises(HistoryLookupError):
        views.diff(ROUTER_A, "0")  # shorter than 8 characters


def test_a_first_version_has_nothing_to_diff_with(store):
    with pytest.raises(NoHistory, match="first version"):
        HistoryViews(store).diff(ROUTER_B)


def test_show_gives_the_newest_text_masked_unless_asked(store):
    version, text = HistoryViews(store).text(ROUTER_A)
    assert version.collected_at == at(2)
    assert "password=***" in text and "wpa2-pre-shared-key=***" in text
    assert "n3w-s3cret" in HistoryViews(store, show_secrets=True).text(ROUTER_A)[1]


def test_search_names_device_and_section_of_every_match_on_the_newest_versions(store):
    hits = list(HistoryViews(store, NAMES).search(r"address=10\.0\.0\.1/"))
    assert [(h.hostname, h.section, h.line) for h in hits] == [
        ("core-1", "/ip address", "add address=10.0.0.1/24 interface=ether1"),
        ("edge-1", "/ip address", "add address=10.0.0.1/24 interface=ether1"),
    ]
    assert list(HistoryViews(store).search("10.0.0.2/")) == list(HistoryViews(store).search("ether2"))
    assert list(HistoryViews(store).search("s3cret")) == []  # secrets are masked before matching
    with pytest.raises(HistoryLookupError, match="search pattern"):
        list(HistoryViews(store).search("(unclosed"))


def test_sectioned_lines_belong_to_the_nearest_path_above():
    text = "# a comment\n/ip address\nadd address=1\n\n/user\nset a\n"
    assert list(sectioned(text)) == [("", "# a comment"), ("/ip address", "/ip address"),
                                      ("/ip address", "add address=1"), ("/user", "/user"),
                                      ("/user", "set a")]


def test_history_lines_show_counts_and_sections_and_the_first_version(store):
    lines = list(commands.format_history(store.versions(ROUTER_A)))
    assert lines[0].split() == ["SNAPSHOT", "COLLECTED", "(UTC)", "ADDED", "REMOVED", "SECTIONS"]
    assert lines[1].split()[2:] == ["+1", "-1", "user:", "Modified", "1", "user"]
    assert lines[2].split()[2:] == ["+1", "-0", "ip/address:", "Added", "1", "address"]
    assert lines[3].endswith("first version")


def test_diff_colours_as_git_only_when_asked(store):
    change = HistoryViews(store).diff(ROUTER_A)
    plain = commands.format_diff(change, "core-1")
    assert "\033[" not in plain and plain.startswith("diff core-1: ")
    coloured = commands.format_diff(change, "core-1", colour=True)
    assert "\033[32m+add name=backup password=*** group=read\033[m\n" in coloured
    assert "\033[31m-add name=backup password=*** group=read\033[m\n" in coloured
    assert "\033[36m@@ " in coloured


def test_colour_auto_follows_the_terminal_and_no_color(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert commands.use_colour("auto", Tty()) and not commands.use_colour("auto", io.StringIO())
    assert commands.use_colour("always", io.StringIO()) and not commands.use_colour("never", Tty())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not commands.use_colour("auto", Tty())


def test_short_ids_are_eight_characters_unless_more_are_needed_to_tell_them_apart():
    assert commands.short_width(["e8ee71ba-3a58", "244f80fc-36b6"]) == 8
    assert commands.short_width(["e8ee71ba-3a58", "e8ee71ba-3a77", "e8ee71ba-3a58"]) == 12
