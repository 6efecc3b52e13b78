"""What every benchmark script shares, one module per question:

- ``common``: paths, the environment a benchmark process must not inherit, scratch dirs;
- ``fleets``: the SSH fleet backed up (our simulator or the independent asyncssh server,
  each in its own process), its inventory and stored host keys;
- ``measure``: CPU and memory of process trees over a window, progress marks;
- ``rayenv``: a private local Ray, child processes answering in JSON, a quiet job;
- ``provenance``: the commit and a clean tree, or a refusal to measure;
- ``results``: results files, medians, ratios, markdown tables.

The scripts import the package as a sibling (``python benchmarks/<script>.py``) and use
the names below as ``bl.<name>``.
"""

from benchlib import provenance
from benchlib.common import (
    HERE,
    RAY_TEMP_DIR,
    REPO,
    RESULTS,
    SERVICE_ENV,
    clean_env,
    int_list,
    scratch,
)
from benchlib.fleets import (
    FLEETS,
    FleetProcess,
    IndependentFleet,
    SimFleet,
    export_command,
    open_fleet,
    write_fingerprints,
    write_inventory,
)
from benchlib.measure import (
    WATCH_ENV,
    Progress,
    Window,
    listening_pid,
    memory_of,
    pid_cpu,
    ray_processes,
    tree,
    tree_cpu,
    wait_quiet,
    watched_pids,
)
from benchlib.rayenv import (
    QUIET_JOB_ENV,
    child_answer,
    hosted_loops,
    local_ray,
    quiet_job_settings,
    ray_head,
    run_child,
    token_auth_env,
    wait_children_gone,
)
from benchlib.results import (
    machine,
    markdown_table,
    median,
    publish,
    ratio,
    save,
    status_counts,
)

__all__ = [
    "FLEETS", "HERE", "QUIET_JOB_ENV", "RAY_TEMP_DIR", "REPO", "RESULTS", "SERVICE_ENV",
    "WATCH_ENV", "FleetProcess", "IndependentFleet", "Progress", "SimFleet", "Window",
    "child_answer", "clean_env", "export_command", "hosted_loops", "int_list", "listening_pid",
    "local_ray", "machine", "markdown_table", "median", "memory_of", "open_fleet", "pid_cpu",
    "provenance", "publish", "quiet_job_settings", "ratio", "ray_head", "ray_processes",
    "run_child", "save", "token_auth_env",
    "scratch", "status_counts", "tree", "tree_cpu", "wait_children_gone", "wait_quiet",
    "watched_pids", "write_fingerprints", "write_inventory",
]
