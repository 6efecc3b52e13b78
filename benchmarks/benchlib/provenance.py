"""Which code a figure was measured with: the commit, and whether the tree was clean.

A figure is publishable only when it was measured at a named commit on a clean tree, with
the ``ray_backup`` of that tree. The scripts refuse anything else unless ``--allow-dirty``
(for development), which marks the results as not publishable.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchlib.common import HERE, REPO, unwind_on_sigterm

# What the runs themselves write: results, not code, so they do not make a tree dirty
# (otherwise the second script of a session would refuse to run after the first).
OUTPUTS = (str((HERE / "results").relative_to(REPO)) + "/",)

_at_start: dict[str, Any] | None = None


def add_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-dirty", action="store_true",
        help="run from a tree with uncommitted changes (development only: the results are "
             "marked not publishable)")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                             timeout=30, check=False)
    except OSError:
        return None
    return out.stdout if out.returncode == 0 else None


def _package_dir() -> Path | None:
    spec = importlib.util.find_spec("ray_backup")
    return Path(spec.origin).resolve().parent if spec and spec.origin else None


def state() -> dict[str, Any]:
    """The commit of the tree the script runs from, its uncommitted files (results aside),
    and whether the ``ray_backup`` being imported is that tree's."""
    commit = (_git("rev-parse", "HEAD") or "").strip() or None
    status = _git("status", "--porcelain", "--untracked-files=all")
    dirty = [line[3:] for line in (status or "").splitlines()
             if line[3:] and not line[3:].startswith(OUTPUTS)]
    package = _package_dir()
    own_package = package is not None and package.is_relative_to(REPO.resolve())
    clean = commit is not None and status is not None and not dirty and own_package
    return {"git_commit": commit[:12] if commit else None, "git_commit_full": commit,
            "git_clean": clean, "publishable": clean, "uncommitted_files": dirty[:50],
            "ray_backup_package": str(package) if package else None}


def require_clean(allow_dirty: bool) -> dict[str, Any]:
    """Refuse to measure from a dirty tree (or with another tree's ``ray_backup``) unless
    ``allow_dirty``; remember the state at start for ``record``. Called first thing by each
    script's parent process, which from then on also unwinds on SIGTERM."""
    global _at_start
    unwind_on_sigterm()
    _at_start = now = state()
    problems = _problems(now)
    if problems and not allow_dirty:
        raise SystemExit(
            f"refusing to measure: {'; '.join(problems)}. Run from a clean `git worktree` at the "
            "commit to measure, with a venv of that worktree (benchmarks/README.md, 'Running "
            "them'), or pass --allow-dirty for a development run (not publishable).")
    if problems:
        print(f"warning: --allow-dirty: {'; '.join(problems)}; results are NOT publishable",
              file=sys.stderr)
    return now


def _problems(now: dict[str, Any]) -> list[str]:
    problems = []
    if now["git_commit"] is None:
        problems.append(f"{REPO} is not a git checkout")
    if now["uncommitted_files"]:
        shown = ", ".join(now["uncommitted_files"][:5])
        problems.append(f"{REPO} has uncommitted changes ({shown}"
                        f"{', …' if len(now['uncommitted_files']) > 5 else ''})")
    if now["ray_backup_package"] is None or not Path(now["ray_backup_package"]).is_relative_to(
            REPO.resolve()):
        problems.append(f"ray_backup is imported from {now['ray_backup_package']}, not from {REPO} "
                        "(use the venv of this tree)")
    return problems


def record() -> dict[str, Any]:
    """The state for a results file: clean only if it was clean at start and still is,
    at the same commit."""
    now = state()
    if _at_start is None:
        return {**now, "git_clean": False, "publishable": False,
                "note": "the tree was not checked when the run started"}
    if not _at_start["git_clean"] or _at_start["git_commit_full"] != now["git_commit_full"]:
        return {**now, "git_clean": False, "publishable": False,
                "uncommitted_files": sorted({*_at_start["uncommitted_files"], *now["uncommitted_files"]}),
                "git_commit_at_start": _at_start["git_commit"]}
    return now


def line(doc: dict[str, Any]) -> str:
    """One line for a printed table: the commit and whether the tree was clean."""
    commit = doc.get("git_commit")
    if "git_clean" not in doc:
        return f"commit {commit} (tree state not recorded)"
    if doc["git_clean"]:
        return f"commit {commit}, clean tree"
    return f"commit {commit}, tree NOT clean: not publishable"
