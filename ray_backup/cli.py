"""`ray-backup`: the command line. Exit codes: 0 ok, 1 a device failed, 2 bad input or settings."""

from __future__ import annotations

import argparse
import json
import sys

from ray_backup import __version__, logs
from ray_backup.errors import ConfigError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _settings(args, **overrides):
    from ray_backup.settings import Settings

    return Settings.load(config_file=getattr(args, "config", None), **overrides)


def cmd_run(args) -> int:
    from ray_backup import job

    settings = _settings(args, inventory_file=args.inventory, output_dir=args.output)
    problem = job.working_dir_problem(settings, job.working_dir_copy())
    if problem:
        raise ConfigError(problem)
    logs.setup(settings.log_level)
    env = job.actor_env({"inventory": args.inventory, "output": args.output, "config": args.config})
    job.connect()
    return job.run(settings, env, service=args.service, status_every=args.status_every,
                   stop_grace=args.stop_grace)


def cmd_stop(args) -> int:
    from ray_backup import job, oneshot

    job.connect()
    workers = oneshot.remove_workers()
    removed = job.stop_all(grace_s=args.grace)
    print(f"stopped the ray-backup job: {removed} device actors removed; "
          f"{workers} one-shot fleet workers removed")
    return EXIT_OK


def _require_job():
    import ray

    from ray_backup import job

    job.connect()
    supervisor = job.running_supervisor()
    if supervisor is None:
        raise ConfigError("no ray-backup job is running on this cluster (start one with `ray-backup run`)")
    return ray, supervisor


def cmd_status(args) -> int:
    from ray_backup import tables

    ray, supervisor = _require_job()
    rows = ray.get(supervisor.status.remote())
    if args.json:
        for row in rows:
            print(json.dumps(tables.status_json(row)))
    else:
        tables.print_status(rows)
    return EXIT_OK


def cmd_trigger(args) -> int:
    ray, supervisor = _require_job()
    results = ray.get([supervisor.trigger.remote(device_id) for device_id in args.device_id])
    for result in results:
        if args.json:
            print(json.dumps(result))
        else:
            tail = result.get("sha256_hash") or result.get("error") or ""
            print(f"{result['device_id']}  {result['status']}  {tail}")
    return EXIT_OK if all(r["status"] != "failed" for r in results) else EXIT_FAILED


def cmd_backup(args) -> int:
    import ray

    from ray_backup import job, oneshot, tables
    from ray_backup.inventory.base import open_inventory

    settings = _settings(args, inventory_file=args.inventory, output_dir=args.output)
    logs.setup(settings.log_level if args.verbose else "WARNING")
    inventory = open_inventory(args.inventory or settings)
    try:
        loaded = inventory.load()
    finally:
        inventory.close()
    for line in loaded.errors:
        print(f"error: {line}", file=sys.stderr)
    devices = loaded.devices
    if args.device:
        known = {d.id for d in devices}
        for missing in sorted(set(args.device) - known):
            print(f"error: device {missing} is not in the inventory", file=sys.stderr)
        devices = [d for d in devices if d.id in set(args.device)]
    if not args.json:
        for note in job.backend_notes(settings):
            print(f"note: {note}", file=sys.stderr)
    env = job.actor_env({"inventory": args.inventory, "output": args.output, "config": args.config})
    emit = (lambda r: print(json.dumps(r), flush=True)) if args.json else None
    connected_here = not ray.is_initialized()
    with tables.progress(len(devices), enabled=not args.json) as advance:
        def on_result(result):
            advance(result)
            if emit:
                emit(result)

        results = oneshot.backup_fleet(settings, devices, env, on_result,
                                       log_level=settings.log_level if args.verbose else "WARNING")
    if not args.json:
        tables.print_results(results, settings)
    if connected_here and ray.is_initialized():
        # Now rather than in Ray's exit hook, which left the process ~0.5 s longer (measured:
        # 0.9 s from the last result to exit, 0.4 s with this); a Ray started here stops too.
        ray.shutdown()
    failed = any(r["status"] == "failed" for r in results) or loaded.errors
    return EXIT_FAILED if failed or (args.device and set(args.device) - {d.id for d in devices}) else EXIT_OK


def cmd_db_init(args) -> int:
    from ray_backup.inventory.schema import init_db

    url = args.database_url or _settings(args).database_url
    if not url:
        raise ConfigError("DATABASE_URL: not set (or pass --database-url)")
    init_db(url)
    print("devices and history tables ready")
    return EXIT_OK


def cmd_config_check(args) -> int:
    from ray_backup.settings import Settings

    try:
        settings = Settings.load(config_file=args.config)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return EXIT_USAGE
    for name, value in settings.summary().items():
        print(f"{name}={value}")
    print("config ok", file=sys.stderr)
    return EXIT_OK


def cmd_limits(args) -> int:
    import ray

    from ray_backup import constants as C

    _require_job()
    semaphore = ray.get_actor(C.SEMAPHORE_NAME, namespace=C.NAMESPACE)
    ray.get(semaphore.set_limits.remote(args.max_concurrent, args.logins_per_second))
    print(json.dumps(ray.get(semaphore.stats.remote())))
    return EXIT_OK


def cmd_hostkey(args) -> int:
    from ray_backup.hostkey_commands import run_hostkey

    return run_hostkey(args, _settings(args, inventory_file=args.inventory))


def cmd_demo(args) -> int:
    from ray_backup.demo import run_demo

    return run_demo(devices=args.devices, duration=args.duration, output=args.output)


def _history_command(name: str):
    """A history view (ray_backup/history/commands.py), imported only when it runs."""
    def run(args) -> int:
        from ray_backup.history import commands

        return commands.run(getattr(commands, f"cmd_{name}"), args)
    return run


def _add_history_views(add) -> None:
    def view(name, help_text, epilog):
        sp = add(name, _history_command(name), help_text)
        sp.epilog = epilog + (" Reads --output when given, else DATABASE_URL, else ./backups; "
                              "needs no Ray. Exit codes: 0 ok, 1 nothing found, 2 bad input.")
        sp.add_argument("--output", metavar="DIR", help="a directory's history (default: "
                        "DATABASE_URL when set, else ./backups)")
        sp.add_argument("--config", metavar="FILE", help="YAML file with settings")
        sp.add_argument("--inventory", metavar="FILE",
                        help="YAML inventory, to name devices by hostname (default: DATABASE_URL)")
        sp.add_argument("--show-secrets", action="store_true",
                        help="print secret values (password=, secret=, ...) instead of masking them")
        return sp

    device_help = "a device id, or a hostname the inventory knows for one device only"
    sp = view("history", "list a device's configuration versions, newest first",
              "Each line: snapshot id, when it was collected, lines added/removed, what changed "
              "per section.")
    sp.add_argument("device", metavar="DEVICE", help=device_help)
    sp.add_argument("--json", action="store_true",
                    help="JSON Lines, one object per version: snapshot_id, collected_at, sha256_hash, "
                         "lines_added, lines_removed (null for the first), sections")
    sp = view("diff", "show what changed between two versions of a device (default: the last two)",
              "OLD and NEW are snapshot ids or unique prefixes of at least 8 characters; with only "
              "OLD, NEW is the newest version.")
    sp.add_argument("device", metavar="DEVICE", help=device_help)
    sp.add_argument("old", metavar="OLD", nargs="?", help="the older version (default: the one before NEW)")
    sp.add_argument("new", metavar="NEW", nargs="?", help="the newer version (default: the newest)")
    sp.add_argument("--color", "--colour", choices=("auto", "always", "never"), default="auto",
                    help="colour the diff as git does (default auto: on a terminal, unless NO_COLOR)")
    sp = view("show", "print a version's full configuration (default: the newest)",
              "SNAPSHOT is a snapshot id or a unique prefix of at least 8 characters.")
    sp.add_argument("device", metavar="DEVICE", help=device_help)
    sp.add_argument("snapshot", metavar="SNAPSHOT", nargs="?", help="default: the newest version")
    sp = view("search", "find lines matching a regular expression in every device's newest version",
              "Each match: device, RouterOS section (the /path above the line), line.")
    sp.add_argument("pattern", metavar="PATTERN", help="a Python regular expression")
    sp.add_argument("-i", "--ignore-case", action="store_true", help="match regardless of case")
    sp.add_argument("--json", action="store_true",
                    help="JSON Lines, one object per match: device_id, hostname, section, line")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ray-backup",
        description="Scheduled, deduplicated MikroTik RouterOS configuration backups on a Ray cluster.",
        epilog="Settings come from environment variables (see the README) or --config FILE.",
    )
    p.add_argument("--version", action="version", version=f"ray-backup {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, fn, help_text):
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(fn=fn)
        return sp

    def common(sp, inventory=True, output=True):
        sp.add_argument("--config", metavar="FILE", help="YAML file with settings")
        if inventory:
            sp.add_argument("--inventory", metavar="FILE", help="YAML inventory (default: DATABASE_URL)")
        if output:
            sp.add_argument("--output", metavar="DIR",
                            help="directory sink when no Kafka is set (default ./backups)")

    sp = add("run", cmd_run, "run the backup job until stopped (what `ray job submit` runs)")
    common(sp)
    sp.add_argument("--service", action="store_true",
                    help="leave the actors running when this driver exits (stop with `ray-backup stop`)")
    sp.add_argument("--status-every", type=float, default=60.0, metavar="S",
                    help="log a fleet summary every S seconds (default 60)")
    sp.add_argument("--stop-grace", type=float, default=2.0, metavar="S",
                    help="on stop, seconds a running backup may take to finish before it is "
                         "abandoned (default 2; `ray job stop` kills the driver after "
                         "RAY_JOB_STOP_WAIT_TIME_S, 3 s by default)")

    sp = add("stop", cmd_stop, "stop a running job and remove its actors")
    sp.add_argument("--grace", type=float, default=10.0, metavar="S",
                    help="seconds a running backup may take to finish (default 10)")

    sp = add("status", cmd_status, "show the running job's per-device status")
    sp.add_argument("--json", action="store_true", help="one JSON object per device per line")

    sp = add("trigger", cmd_trigger, "back devices up now through the running job")
    sp.add_argument("device_id", nargs="+", metavar="DEVICE_ID")
    sp.add_argument("--json", action="store_true", help="one JSON object per device per line")

    sp = add("backup", cmd_backup, "back up every device (or --device ones) once, in parallel on Ray")
    common(sp)
    sp.add_argument("--device", action="append", metavar="ID", help="only this device (repeatable)")
    sp.add_argument("--json", action="store_true",
                    help="one JSON object per device per line: device_id, status, sha256_hash, "
                         "error_kind, error, duration_s")
    sp.add_argument("-v", "--verbose", action="store_true", help="log each backup")

    _add_history_views(add)

    sp = add("demo", cmd_demo, "back up a simulated RouterOS fleet on loopback with a local Ray")
    sp.add_argument("--devices", type=int, default=12, metavar="N", help="simulated devices (default 12)")
    sp.add_argument("--duration", type=float, default=60.0, metavar="S", help="seconds to run (default 60)")
    sp.add_argument("--output", default="./demo-backups", metavar="DIR",
                    help="where the snapshots go (default ./demo-backups)")

    db = add("db", None, "database commands")
    dbsub = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    sp = dbsub.add_parser("init", help="create the devices table where none exists")
    sp.set_defaults(fn=cmd_db_init)
    sp.add_argument("--database-url", metavar="URL", help="default: DATABASE_URL")
    sp.add_argument("--config", metavar="FILE", help="YAML file with settings")

    cfg = add("config", None, "configuration commands")
    cfgsub = cfg.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    sp = cfgsub.add_parser("check", help="validate settings; print each problem on one line")
    sp.set_defaults(fn=cmd_config_check)
    sp.add_argument("--config", metavar="FILE", help="YAML file with settings")

    hk = add("hostkey", None, "accept or forget a device's stored SSH host key")
    hksub = hk.add_subparsers(dest="hostkey_command", required=True, metavar="COMMAND")
    sp = hksub.add_parser(
        "accept", help="store a new host key for a device (after a host_key_mismatch)",
        description="Store the --fingerprint key (default: the key the device presented at its last "
                    "host_key_mismatch) as the device's host key, in place of the stored one. "
                    "Writes the inventory (PostgreSQL columns or the YAML's .hostkeys.json), "
                    "needs no running job, and has a running job retry the device now. "
                    "Check the key on the device first (/ip ssh print, or ssh-keygen -lf).")
    sp.set_defaults(fn=cmd_hostkey)
    sp.add_argument("device_id", metavar="DEVICE_ID", help="the device's id (UUID)")
    sp.add_argument("--fingerprint", metavar="SHA256:…",
                    help="the key to trust, as `ssh-keygen -lf` prints it (default: the one the "
                         "device presented at its last mismatch, from Redis or the running job)")
    common(sp, output=False)
    sp = hksub.add_parser(
        "reset", help="forget a device's stored host key: back to trust on first use",
        description="Remove the device's stored host key, so that its next backup trusts and "
                    "stores whatever key it presents. Writes the inventory, needs no running "
                    "job, and has a running job retry the device now.")
    sp.set_defaults(fn=cmd_hostkey)
    sp.add_argument("device_id", metavar="DEVICE_ID", help="the device's id (UUID)")
    common(sp, output=False)

    sp = add("limits", cmd_limits, "change the running job's SSH limits without a restart")
    sp.add_argument("--max-concurrent", type=int, metavar="N")
    sp.add_argument("--logins-per-second", type=float, metavar="R")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
