"""Issue 9's soak: 60 devices, one actor each, through `ray job submit` on a token-auth head.

Opt-in (about ten minutes, ~7 GB of actor processes):

    RAY_BACKUP_SOAK=1 .venv/bin/python -m pytest -m soak tests/reliability/test_soak_job.py -s

The same run as a script that prints a summary: `python -m tests.reliability.soak_job`.
"""

from __future__ import annotations

import json

import pytest

from tests.reliability.soak_job import run_soak


@pytest.mark.soak
@pytest.mark.timeout(1800)
def test_scheduled_job_keeps_60_devices_backed_up_and_stops_clean(tmp_path):
    result = run_soak(tmp_path, devices=60, interval=120)
    print(json.dumps(result.summary(), indent=2))
    problems = result.problems()
    assert not problems, "\n".join([*problems, json.dumps(result.summary())])
