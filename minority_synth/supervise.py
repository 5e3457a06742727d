"""Ctrl-C and SIGTERM stop a run within seconds and leave no Ray or Prefect process behind.

A run's process tree is the CLI, its ephemeral Prefect server, and Ray's gcs_server, raylet,
agents and workers. A signal to the process group reaches all of them at once: the Prefect
server dies while the flow engine still reports to it (and retries for minutes), the raylet
may outlive its driver, and Prefect's own SIGTERM bridge turns the signal into a crash report
first. So the commands that start Prefect or Ray run as the child of a small supervisor (this
module, no Prefect, Ray or torch imported) that:

- is a child subreaper (`PR_SET_CHILD_SUBREAPER`), so every orphaned descendant (a raylet whose
  driver died) is re-parented to it and can be found;
- on SIGINT/SIGTERM passes the signal to the command once, gives it `GRACE_S` to finish by
  itself (its flow removes what it did not commit and frees the lease), then stops every
  descendant left (SIGTERM, then SIGKILL after `KILL_AFTER_S`) and exits 128 + signal (130, 143);
- after the command exits, for whatever reason, stops any descendant it left behind.

What was committed stays committed (commits are atomic, a dead holder's lease is free at once on
this machine), so rerunning the same command resumes. Linux only (elsewhere the command runs
unsupervised, as before).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

SUPERVISED_COMMANDS = frozenset({"synthesize", "score", "demo", "compare", "augment-eval", "tune"})  # those that start Prefect or Ray
SUPERVISED_ENV = "MINORITY_SUPERVISED"  # set in the command's own process: it must not supervise itself again
GRACE_S = 3.0  # the command's own time to stop after a signal
KILL_AFTER_S = 2.0  # SIGTERM to SIGKILL, for what is left after that
PR_SET_CHILD_SUBREAPER = 36


def should_supervise(argv: list[str]) -> bool:
    """Only a real command line (not an in-process CliRunner), only once, only on Linux."""
    name = os.path.basename(argv[0]) if argv else ""
    return sys.platform.startswith("linux") and not os.environ.get(SUPERVISED_ENV) and name in ("minority-synth", "cli.py", "__main__.py")


def supervise(argv: list[str]) -> int:
    """Run this command line again as a supervised child; its exit status (128 + N after signal N)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # no subreaper: descendants still in the tree are found all the same
    command = [sys.executable, "-m", "minority_synth.cli", *argv[1:]] if argv[0].endswith(".py") else [sys.executable, argv[0], *argv[1:]]
    received: list[int] = []
    child = subprocess.Popen(command, env={**os.environ, SUPERVISED_ENV: "1"})

    def on_signal(signum: int, _frame) -> None:
        if not received:
            received.append(signum)
            try:
                child.send_signal(signum)  # where it came by `kill PID`, not to the whole group
            except ProcessLookupError:
                pass

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    give_up: float | None = None
    while child.poll() is None:
        if received and give_up is None:
            give_up = time.monotonic() + GRACE_S
        if give_up is not None and time.monotonic() >= give_up:
            break
        _reap(keep=child.pid)
        time.sleep(0.1)
    stop_descendants(keep=child.pid)
    code = child.wait()
    if received:
        print(f"stopped by {signal.Signals(received[0]).name}, with everything the command had started; what it committed is kept: "
              "rerun the same command to resume", file=sys.stderr)
        return 128 + received[0]
    return 128 - code if code < 0 else code


def stop_descendants(keep: int | None = None) -> None:
    """SIGTERM every live process below this one, SIGKILL those still there after KILL_AFTER_S."""
    deadline = time.monotonic() + KILL_AFTER_S
    while alive := descendants():
        sig = signal.SIGKILL if time.monotonic() >= deadline else signal.SIGTERM
        for pid in alive:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
        _reap(keep)


def _processes() -> dict[int, tuple[int, str]]:
    """{pid: (parent pid, state)} of every process, from /proc/PID/stat."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as handle:
                    fields = handle.read().rsplit(b")", 1)[1].split()  # after the command name, which may hold spaces
            except OSError:
                continue
            found[int(entry)] = (int(fields[1]), fields[0].decode())
    return found


def descendants() -> list[int]:
    """Live (not zombie) processes below this one."""
    table = _processes()
    below, frontier = [], [os.getpid()]
    while frontier:
        parent = frontier.pop()
        kids = [pid for pid, (ppid, _) in table.items() if ppid == parent]
        below += [pid for pid in kids if table[pid][1] != "Z"]
        frontier += kids
    return below


def _reap(keep: int | None) -> None:
    """Collect ended children (re-parented descendants), not the command itself (`keep`), whose
    status `Popen.wait` reads."""
    for pid, (ppid, state) in _processes().items():
        if ppid == os.getpid() and state == "Z" and pid != keep:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
