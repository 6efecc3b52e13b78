"""The bare-SSH floor as a user would write it: K paramiko sessions in a thread pool.

    python benchmarks/benchlib/bare_pool.py <inventory.yaml> <K>

Each device: login, the export (``/export show-sensitive``, ``/export`` on RouterOS 6),
read it all. Prints one JSON line (devices, exports over 1,000 bytes, bytes). It imports
nothing of ray-backup or of the benchmarks, so that timing it as a whole process times
what a 20-line script costs.
"""

import json
import sys
from concurrent.futures import ThreadPoolExecutor

import paramiko
import yaml


def backup(row: dict) -> int:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        client.connect(row["host"], row["port"], row["username"], row["password"],
                       look_for_keys=False, allow_agent=False, timeout=30)
        v6 = str(row.get("routeros_version", "")).startswith("6.")
        _, stdout, _ = client.exec_command("/export" if v6 else "/export show-sensitive", timeout=60)
        return len(stdout.read())
    except Exception:  # a failed device counts as not backed up; the others carry on
        return 0
    finally:
        client.close()


def main() -> None:
    with open(sys.argv[1]) as f:
        rows = yaml.safe_load(f)["devices"]
    with ThreadPoolExecutor(int(sys.argv[2])) as pool:
        sizes = list(pool.map(backup, rows))
    print(json.dumps({"devices": len(rows), "ok": sum(s > 1000 for s in sizes), "bytes": sum(sizes)}))


if __name__ == "__main__":
    main()
