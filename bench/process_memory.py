"""Resident memory and CPU time of a process and everything it started (a service, its Spark JVM, its Python
workers), from /proc."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def tree_pids(root: int) -> list[int]:
    """``root`` and its descendants alive now."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # it exited meanwhile
            children.setdefault(parent, []).append(int(entry.name))
    found, pending = [], [root]
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending += children.get(pid, [])
    return found


def tree_resident_bytes(root: int) -> Counter:
    """Resident bytes (VmRSS) of ``root`` and its descendants, summed per command name."""
    by_command: Counter = Counter()
    for pid in tree_pids(root):
        try:
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        except (OSError, ValueError):
            continue
        if "VmRSS" in fields:  # kernel threads have none
            by_command[fields["Name"].strip()] += int(fields["VmRSS"].split()[0]) * 1024
    return by_command


def tree_proportional_bytes(root: int) -> int:
    """Proportional set size (Pss) of ``root`` and its descendants, summed: each shared page counts once over the
    processes that share it. Summed VmRSS counts the pages Python workers forked from one daemon share (NumPy,
    pandas, Arrow) once per worker."""
    total = 0
    for pid in tree_pids(root):
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue  # it exited meanwhile, or a kernel thread
        total += sum(int(line.split()[1]) * 1024 for line in rollup.splitlines() if line.startswith("Pss:"))
    return total


def tree_cpu_seconds_by_command(root: int) -> Counter:
    """CPU time (user + system) used so far by ``root`` and its descendants, summed per command name; those that
    exited and were waited for count in their parent's (cutime/cstime)."""
    by_command: Counter = Counter()
    for pid in tree_pids(root):
        try:
            command, fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)
            fields = fields.split()
        except (OSError, IndexError, ValueError):
            continue
        by_command[command.split("(", 1)[1]] += sum(int(value) for value in fields[11:15]) / CLOCK_TICKS
    return by_command
