"""Run as a script (``python _reaper.py ROOTS``) by ``pybert.ray`` beside a local Ray cluster
that a driver started: it follows the process trees rooted at ROOTS until its standard input
closes (the driver ended, even by SIGKILL, since the kernel closes a dead process's pipes),
then kills every process it saw in them (a JSON list of [pid, start time] of the cluster's processes; the start time guards
against a reused pid). Linux only (/proc). Imports nothing of pybert or torch, so it starts in
milliseconds."""

import json
import os
import select
import signal
import sys
import time


def processes() -> dict[int, tuple[int, int]]:
    """{pid: (parent pid, start time)} of every process, from /proc."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        found[int(name)] = (int(fields[1]), int(fields[19]))
    return found


def descendants(roots: list, table: dict) -> list[int]:
    """The live processes of ``roots`` (matched by start time) and all their descendants."""
    alive = [pid for pid, start in roots if table.get(pid, (None, None))[1] == start]
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    out, stack = [], list(alive)
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, []))
    return out


def grown(known: set, table: dict) -> set:
    """``known`` with the live descendants of its processes added."""
    return known | {(pid, table[pid][1]) for pid in descendants(sorted(known), table)}


def main() -> None:
    known = {tuple(root) for root in json.loads(sys.argv[1])}
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver's Ctrl-C is not ours
    # Every process ever seen in the trees stays doomed: once its parent dies (the raylet
    # exits soon after the driver) a child is re-parented to init and is no longer found
    # below the roots, so the trees are walked while the driver lives, twice a second.
    stdin = sys.stdin.fileno()
    while True:
        known = grown(known, processes())
        if select.select([stdin], [], [], 0.5)[0] and not os.read(stdin, 4096):
            break  # the driver ended: its end of the pipe closed
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        table = processes()
        known = grown(known, table)
        alive = [pid for pid, start in known if table.get(pid, (None, None))[1] == start]
        if not alive:
            return
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.2)


if __name__ == "__main__":
    main()
