"""What the operator views ask of a history store: versions, a diff, a text, a fleet search.

Shared by ``ray-backup history | diff | show | search`` and the notebook API. Plain
Python over a ``HistoryStore``: no Ray, so a laptop reads a directory's history
with nothing running. Every text that leaves here has its secret values masked
unless the caller asked for them (``show_secrets``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from ray_backup.errors import ConfigError
from ray_backup.history.base import HistoryLookupError, HistoryStore, Version
from ray_backup.history.mask import mask_secrets


class NoHistory(HistoryLookupError):
    """The device is known but has no version (or not enough of them for a diff)."""


@dataclass(frozen=True)
class Hit:
    """One line of the fleet that matched a search."""

    device_id: str
    hostname: str | None
    section: str  # the nearest preceding "/path" header, "" before the first one
    line: str

    def to_json(self) -> dict:
        return {"device_id": self.device_id, "hostname": self.hostname, "section": self.section,
                "line": self.line}


@dataclass(frozen=True)
class DiffView:
    """A diff between two versions of a device (``text`` is '' when they are the same)."""

    device_id: str
    old: Version
    new: Version
    text: str


Names = Mapping[str, "str | None"]


class HistoryViews:
    """The views over one store.

    ``names`` maps device id → hostname where an inventory knows it, or is a function
    that reads them, called only when a hostname is needed (a device given by id, the
    common case, needs no inventory read).
    """

    def __init__(self, store: HistoryStore, names: Names | Callable[[], Names] | None = None,
                 show_secrets: bool = False) -> None:
        self.store = store
        self._names = names if names is not None else {}
        self.show_secrets = show_secrets

    @property
    def names(self) -> Names:
        if callable(self._names):
            self._names = dict(self._names())
        return self._names

    # -- devices ---------------------------------------------------------------------------

    def device(self, ref: str) -> str:
        """A device id from an id or a unique hostname; ``HistoryLookupError`` otherwise."""
        if self._has_history(ref) or ref in self.names:
            return ref
        matches = sorted(i for i, name in self.names.items() if name == ref)
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise HistoryLookupError(f"device {ref!r}: hostname of {len(matches)} devices "
                                     f"({', '.join(matches)}); give the device id")
        where = "in the history or the inventory" if self.names else "in the history"
        raise HistoryLookupError(f"device {ref!r}: no such device id or hostname {where}")

    def _has_history(self, ref: str) -> bool:
        try:
            return bool(self.store.versions(ref, limit=1))
        except HistoryLookupError:  # not even a device id to this store (PostgreSQL: not a UUID)
            return False

    def label(self, device_id: str) -> str:
        name = self.names.get(device_id)
        return f"{name} ({device_id})" if name else device_id

    # -- one device ------------------------------------------------------------------------

    def versions(self, device_ref: str, limit: int | None = None) -> list[Version]:
        """The device's versions, newest first; ``NoHistory`` when it has none."""
        device_id = self.device(device_ref)
        versions = self.store.versions(device_id, limit=limit)
        if not versions:
            raise NoHistory(f"device {self.label(device_id)}: no configuration history yet")
        return versions

    def text(self, device_ref: str, snapshot: str | None = None) -> tuple[Version, str]:
        """A version (default the newest) and its configuration text."""
        device_id = self.device(device_ref)
        version = self._version(device_id, snapshot)
        return version, self._masked(self.store.text(device_id, version.snapshot_id))

    def diff(self, device_ref: str, old: str | None = None, new: str | None = None) -> DiffView:
        """The diff from ``old`` to ``new`` (default: the last two versions; ``new`` the newest)."""
        device_id = self.device(device_ref)
        if new is None and old is None:  # the common case: read two versions, not all
            versions = self.store.versions(device_id, limit=2)
            new_version = self._version(device_id, None, versions)
            old_version = self._before(device_id, new_version, versions)
        else:
            versions = self.store.versions(device_id)
            new_version = self._version(device_id, new, versions)
            old_version = (self._before(device_id, new_version, versions) if old is None
                           else self._version(device_id, old, versions))
        text = self.store.diff(device_id, old_version.snapshot_id, new_version.snapshot_id)
        return DiffView(device_id, old_version, new_version, self._masked(text))

    def _before(self, device_id: str, version: Version, versions: list[Version]) -> Version:
        at = versions.index(version)
        if at + 1 >= len(versions):
            raise NoHistory(f"device {self.label(device_id)}: {version.snapshot_id[:12]} is its "
                            "first version, nothing to compare it with")
        return versions[at + 1]

    def _version(self, device_id: str, ref: str | None,
                 versions: list[Version] | None = None) -> Version:
        if versions is None:
            versions = self.store.versions(device_id, limit=None if ref else 1)
        if not versions:
            raise NoHistory(f"device {self.label(device_id)}: no configuration history yet")
        if ref is None:
            return versions[0]
        snapshot_id = self.store.resolve(device_id, ref)
        for version in versions:
            if version.snapshot_id == snapshot_id:
                return version
        raise HistoryLookupError(f"device {self.label(device_id)}: no version {ref!r}")

    # -- the fleet -------------------------------------------------------------------------

    def search(self, pattern: str, ignore_case: bool = False) -> Iterator[Hit]:
        """Lines of every device's newest version that match the regular expression."""
        try:
            regex = re.compile(pattern, re.IGNORECASE if ignore_case else 0)
        except re.error as exc:
            raise HistoryLookupError(f"search pattern {pattern!r}: {exc}") from None
        for device_id, snapshot_id in sorted(self.store.latest(),
                                             key=lambda item: (self.names.get(item[0]) or "", item[0])):
            text = self._masked(self.store.text(device_id, snapshot_id))
            for section, line in sectioned(text):
                if regex.search(line):
                    yield Hit(device_id, self.names.get(device_id), section, line)

    def _masked(self, text: str) -> str:
        return text if self.show_secrets else mask_secrets(text)


def sectioned(text: str) -> Iterable[tuple[str, str]]:
    """(section, line) for every non-header line: the section is the nearest ``/path`` above."""
    section = ""
    for line in text.splitlines():
        if line.startswith("/"):
            section = line.strip()
        if line.strip():
            yield section, line


def inventory_names(settings) -> dict[str, str | None]:
    """Device id → hostname from the configured inventory; {} when none is configured.

    ``ConfigError`` (one line) when it is configured but cannot be read.
    """
    if not (settings.inventory_file or settings.database_url):
        return {}
    from ray_backup.inventory.base import open_inventory

    try:
        source = open_inventory(settings)
        try:
            loaded = source.load()
        finally:
            source.close()
    except Exception as exc:  # any failure to read it: say which, in one line
        raise ConfigError(f"inventory not read: {type(exc).__name__}: {exc}") from None
    return {d.id: d.hostname for d in loaded.devices}
