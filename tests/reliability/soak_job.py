"""Soak of the scheduled job as an operator runs it (issue 9's "Done when").

`ray start --head` with Ray's default token authentication, a simulated fleet, then the
README's recipe: `ray job submit --working-dir . --runtime-env-json … -- ray-backup run
--inventory <absolute path> --output <absolute path>`, one actor per device, not service
mode. It watches the supervisor (it must stay alive), reads each device's successes from
the output directory's snapshots.jsonl, then runs `ray job stop` (Ray's default stop wait)
and times how long the job's named actors take to go.

    python -m tests.reliability.soak_job [--devices 60] [--interval 120]   # prints a summary

`tests/reliability/test_soak_job.py` runs it under pytest (RAY_BACKUP_SOAK=1, marker soak).
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ray_backup import constants as C
from ray_backup.simulator.fleet import make_fleet, write_inventory_yaml
from ray_backup.simulator.server import Simulator
from tests.support.ray_head import RayHead, token_auth_head

NEEDED_SUCCESSES = 4
SPACING_TOLERANCE = 0.10  # consecutive successes one interval apart, ±10 %
STOP_LIMIT_S = 45.0  # after `ray job stop`, none of the job's named actors may remain
POLL_S = 10.0


@dataclass
class SoakResult:
    interval: float
    device_ids: list[str]
    successes: dict[str, list[float]] = field(default_factory=dict)  # unix times, sorted
    supervisor_polls: int = 0
    supervisor_problems: list[str] = field(default_factory=list)
    job_status: str = ""
    stop_s: float | None = None  # `ray job stop` issued → no named actor left
    left_after_stop: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def spacings(self) -> list[float]:
        pairs = (zip(times[:-1], times[1:], strict=True) for times in self.successes.values())
        return [b - a for pair in pairs for a, b in pair]

    def counts(self) -> list[int]:
        return [len(self.successes.get(d, [])) for d in self.device_ids]

    def summary(self) -> dict:
        spacings, counts = self.spacings(), self.counts()
        return {
            "devices": len(self.device_ids),
            "interval_s": self.interval,
            "successes_per_device": {"min": min(counts, default=0), "max": max(counts, default=0)},
            "spacing_s": {"min": round(min(spacings), 1) if spacings else None,
                          "max": round(max(spacings), 1) if spacings else None},
            "supervisor_polls": self.supervisor_polls,
            "supervisor_problems": self.supervisor_problems[:5],
            "job_status_before_stop": self.job_status,
            "stop_s": None if self.stop_s is None else round(self.stop_s, 1),
            "left_after_stop": self.left_after_stop[:10],
            "elapsed_s": round(self.elapsed_s),
        }

    def problems(self) -> list[str]:
        """What fails the soak."""
        found = list(self.supervisor_problems[:3])
        short = [d for d in self.device_ids if len(self.successes.get(d, [])) < NEEDED_SUCCESSES]
        if short:
            found.append(f"{len(short)} of {len(self.device_ids)} devices have fewer than "
                         f"{NEEDED_SUCCESSES} successes (counts {sorted(self.counts())[:10]}…)")
        low, high = self.interval * (1 - SPACING_TOLERANCE), self.interval * (1 + SPACING_TOLERANCE)
        off = [round(s, 1) for s in self.spacings() if not low <= s <= high]
        if off:
            found.append(f"{len(off)} spacings outside {low:g}–{high:g} s: {off[:10]}")
        if self.stop_s is None:
            found.append(f"named actors still there {STOP_LIMIT_S:g} s after `ray job stop`: "
                         f"{self.left_after_stop[:10]}")
        return found


def read_successes(history: Path) -> dict[str, list[float]]:
    """Each device's snapshot times from the directory sink's snapshots.jsonl."""
    times: dict[str, list[float]] = {}
    if not history.exists():
        return times
    for line in history.read_text().splitlines():
        if line.strip():
            event = json.loads(line)
            stamp = datetime.fromisoformat(event["collected_at"].replace("Z", "+00:00")).timestamp()
            times.setdefault(event["device_id"], []).append(stamp)
    return {device: sorted(stamps) for device, stamps in times.items()}


def job_settings(interval: int, per_actor: str = "1") -> dict[str, str]:
    """The job's settings, as `--runtime-env-json` env_vars (the README's recipe)."""
    return {
        "RAY_BACKUP_DEVICES_PER_ACTOR": per_actor,
        "CONFIG_BACKUP_INTERVAL": str(interval),
        "CONFIG_BACKUP_JITTER_MIN": "5",
        "CONFIG_BACKUP_JITTER_MAX": "30",
        "RAY_BACKUP_METRICS_PORT": "0",  # other jobs on this machine may hold 9464
    }


def submit(head: RayHead, workdir: Path, inventory: Path, output: Path, interval: int,
           per_actor: str = "1") -> str:
    """`ray job submit` as the README says; return the submission id."""
    runtime_env = json.dumps({"env_vars": job_settings(interval, per_actor)})
    errors = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        # The dashboard answers before its job agent is up ("No available agent"): retry.
        result = head.ray("job", "submit", "--no-wait", "--working-dir", ".",
                          "--runtime-env-json", runtime_env, "--",
                          "ray-backup", "run", "--inventory", str(inventory), "--output", str(output),
                          cwd=workdir)
        if result.returncode == 0:
            return re.search(r"raysubmit_[A-Za-z0-9]+", result.stdout).group(0)
        errors.append(result.stderr[-500:])
        time.sleep(3)
    raise RuntimeError(f"job not submitted: {errors[-1] if errors else ''}")


def job_status(head: RayHead, job_id: str) -> str:
    result = head.ray("job", "status", job_id)
    found = re.search(r"Status for job '[^']+': (\w+)", result.stdout + result.stderr)
    return found.group(1) if found else (result.stdout + result.stderr).strip()[-200:]


def watch(head: RayHead, job_id: str, history: Path, result: SoakResult, deadline_s: float) -> None:
    """Poll the supervisor and the successes until every device has enough, or a failure."""
    start = time.monotonic()
    supervisor_id = None
    while time.monotonic() - start < deadline_s:
        time.sleep(POLL_S)
        actors = {a["name"]: a for a in head.named_actors(C.NAMESPACE)}
        supervisor = actors.get(C.SUPERVISOR_NAME)
        result.supervisor_polls += 1
        if supervisor is not None and supervisor["state"] == "ALIVE":
            supervisor_id = supervisor_id or supervisor["actor_id"]
            if supervisor["actor_id"] != supervisor_id:
                result.supervisor_problems.append(f"supervisor replaced at {time.monotonic() - start:.0f} s")
        elif supervisor_id is not None or time.monotonic() - start > 180:
            state = supervisor["state"] if supervisor else "gone"
            result.supervisor_problems.append(
                f"supervisor {state} at {time.monotonic() - start:.0f} s after submission "
                f"({len(actors)} named actors left)")
        result.successes = read_successes(history)
        result.job_status = job_status(head, job_id)
        if result.supervisor_problems or result.job_status not in ("PENDING", "RUNNING"):
            return
        if min(result.counts(), default=0) >= NEEDED_SUCCESSES:
            return


def stop(head: RayHead, job_id: str, result: SoakResult) -> None:
    """`ray job stop` with Ray's default stop wait; time until no named actor of ours is left."""
    issued = time.monotonic()
    head.ray("job", "stop", job_id, timeout=180)
    while time.monotonic() - issued <= STOP_LIMIT_S:
        left = [a["name"] for a in head.named_actors(C.NAMESPACE)]
        if not left:
            result.stop_s = time.monotonic() - issued
            return
        result.left_after_stop = left
        time.sleep(2)


def run_soak(workdir: Path, devices: int = 60, interval: int = 120, deadline_s: float = 1080,
             per_actor: str = "1") -> SoakResult:
    """The whole soak in ``workdir``; returns what it measured (asserts nothing).

    ``per_actor``: RAY_BACKUP_DEVICES_PER_ACTOR; issue 9 asks for one actor per device ("1"),
    "auto" is the default an operator gets."""
    began = time.monotonic()
    fleet = make_fleet(devices, seed=9)
    result = SoakResult(interval=interval, device_ids=[d.id for d in fleet])
    jobdir, output = workdir / "job", workdir / "backups"
    jobdir.mkdir(parents=True, exist_ok=True)
    with Simulator(fleet) as _sim, token_auth_head(num_cpus=2) as head:
        inventory = write_inventory_yaml(workdir / "devices.yaml", fleet)
        job_id = submit(head, jobdir, inventory.resolve(), output.resolve(), interval, per_actor)
        try:
            watch(head, job_id, output / "snapshots.jsonl", result, deadline_s)
        finally:
            stop(head, job_id, result)
            result.successes = read_successes(output / "snapshots.jsonl")
            result.elapsed_s = time.monotonic() - began
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=60)
    parser.add_argument("--interval", type=int, default=120)
    parser.add_argument("--devices-per-actor", default="1",
                        help='RAY_BACKUP_DEVICES_PER_ACTOR for the job (default 1; "auto" is '
                             'the default setting)')
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rbsoak") as tmp:
        result = run_soak(Path(tmp), devices=args.devices, interval=args.interval,
                          per_actor=args.devices_per_actor)
    print(json.dumps(result.summary(), indent=2))
    for problem in result.problems():
        print(f"problem: {problem}")
    return 1 if result.problems() else 0


if __name__ == "__main__":
    raise SystemExit(main())
