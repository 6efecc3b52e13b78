"""The SSH permit's lease covers the longest backup (issue 9, item 4c)."""

from ray_backup.runtime import schedule
from ray_backup.settings import Settings


def test_the_lease_covers_connect_probe_export_and_re_export():
    settings = Settings(connect_timeout=10, command_timeout=60)
    # TCP + handshake + two login tries, then three commands, each opening a channel first
    worst = 10 + 11 + 2 * 10 + 3 * (10 + 60)
    assert schedule(settings).lease_s > worst
