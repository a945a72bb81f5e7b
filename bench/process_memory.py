"""Resident memory of a process and everything it started (a service, its Spark JVM, its Python workers), from /proc."""

from __future__ import annotations

from collections import Counter
from pathlib import Path


def tree_resident_bytes(root: int) -> Counter:
    """Resident bytes (VmRSS) of ``root`` and its descendants, summed per command name."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # it exited meanwhile
            children.setdefault(parent, []).append(int(entry.name))
    by_command: Counter = Counter()
    pending = [root]
    while pending:
        pid = pending.pop()
        pending += children.get(pid, [])
        try:
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        except (OSError, ValueError):
            continue
        if "VmRSS" in fields:  # kernel threads have none
            by_command[fields["Name"].strip()] += int(fields["VmRSS"].split()[0]) * 1024
    return by_command
