"""A tiny ``/system/bin/sh``: just the commands the adb device issues.

Supports ``;``, ``&&`` and ``||`` sequencing, ``$?``, and drops ``2>/dev/null``.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from adbd_emulator.benchmark import Write, behaviour_of, run_benchmark_model
from adbd_emulator.fs import Sandbox

_SEPARATORS = {";", "&&", "||"}
_REDIRECT = re.compile(r"^[12]?>/dev/null$")


@dataclass
class ShellState:
    sandbox: Sandbox
    props: dict[str, str]
    cpus: int
    layout: str
    drop_run: Callable[[], bool]
    slowdown: Callable[[], float] = lambda: 1.0
    # What benchmark_model's invocations are timed on (thread CPU time: immune to a busy
    # test machine, for tests that compare figures closely).
    clock: Callable[[], float] = time.perf_counter
    # A model's fixed invocation time (µs), replacing the timed one: EmulatorConfig.steady_times.
    steady_us: Callable[[Path], float] | None = None
    commands: list[str] = field(default_factory=list)
    taskset_masks: list[str] = field(default_factory=list)
    benchmark_args: list[list[str]] = field(default_factory=list)


def _split(cmdline: str) -> list[list[str]]:
    """Token lists separated by operator tokens: [[words], [op], [words], ...]."""
    lex = shlex.shlex(cmdline, posix=True, punctuation_chars=";&|")
    lex.whitespace_split = True
    out: list[list[str]] = [[]]
    for tok in lex:
        if tok in _SEPARATORS:
            out.extend([[tok], []])
        elif not _REDIRECT.match(tok):
            out[-1].append(tok)
    return out


def run_shell(cmdline: str, state: ShellState, write: Write) -> int:
    state.commands.append(cmdline)
    code = 0
    skip = False
    for part in _split(cmdline):
        if len(part) == 1 and part[0] in _SEPARATORS:
            op = part[0]
            skip = (op == "&&" and code != 0) or (op == "||" and code == 0)
            continue
        if not part or skip:
            continue
        words = [w.replace("$?", str(code)) for w in part]
        code = _run(words, state, write)
    return code


def _run(words: list[str], st: ShellState, write: Write) -> int:
    cmd, args = words[0], words[1:]
    sb = st.sandbox
    if cmd == "echo":
        write(" ".join(args) + "\n")
        return 0
    if cmd == "getprop":
        if not args:
            write("".join(f"[{k}]: [{v}]\n" for k, v in sorted(st.props.items())))
        else:
            write(st.props.get(args[0], "") + "\n")
        return 0
    if cmd == "cat":
        code = 0
        for a in args:
            p = sb.path(a)
            if p.is_file():
                write(p.read_bytes().decode(errors="replace"))
            else:
                write(f"cat: {a}: No such file or directory\n")
                code = 1
        return code
    if cmd == "ls":
        code = 0
        for a in [x for x in args if not x.startswith("-")]:
            p = sb.path(a)
            if p.is_dir():
                write("".join(c.name + "\n" for c in sorted(p.iterdir())))
            elif p.exists():
                write(a + "\n")
            else:
                write(f"ls: {a}: No such file or directory\n")
                code = 1
        return code
    if cmd == "mkdir":
        for a in [x for x in args if not x.startswith("-")]:
            sb.path(a).mkdir(parents="-p" in args, exist_ok="-p" in args)
        return 0
    if cmd == "rm":
        for a in [x for x in args if not x.startswith("-")]:
            p = sb.path(a)
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
            elif "-f" not in args and "-rf" not in args:
                write(f"rm: {a}: No such file or directory\n")
                return 1
        return 0
    if cmd == "chmod":
        missing = [a for a in args[1:] if not sb.path(a).exists()]
        for a in missing:
            write(f"chmod: {a}: No such file or directory\n")
        return 1 if missing else 0
    if cmd == "md5sum":
        for a in args:
            p = sb.path(a)
            if not p.is_file():
                write(f"md5sum: {a}: No such file or directory\n")
                return 1
            write(f"{hashlib.md5(p.read_bytes()).hexdigest()}  {a}\n")
        return 0
    if cmd == "taskset":
        if len(args) < 2:
            write("usage: taskset [-ap] [mask] [PID | cmd [args...]]\n")
            return 1
        try:
            mask = int(args[0], 16)
        except ValueError:
            write(f"taskset: bad mask '{args[0]}'\n")
            return 1
        if mask <= 0 or mask >= (1 << st.cpus):
            write("taskset: sched_setaffinity: Invalid argument\n")
            return 1
        st.taskset_masks.append(args[0])
        return _run(args[1:], st, write)
    if cmd.startswith("/"):
        p = sb.path(cmd)
        if not p.is_file():
            write(f"/system/bin/sh: {cmd}: inaccessible or not found\n")
            return 127
        behaviour = behaviour_of(p.read_bytes())
        if behaviour is None:
            write(f"/system/bin/sh: {cmd}: not executable: 64-bit ELF file\n")
            return 126
        st.benchmark_args.append(args)
        return run_benchmark_model(
            args,
            behaviour=behaviour,
            layout=st.layout,
            resolve=sb.path,
            write=write,
            drop_now=st.drop_run,
            slowdown=st.slowdown,
            clock=st.clock,
            steady_us=st.steady_us,
        )
    write(f"/system/bin/sh: {cmd}: inaccessible or not found\n")
    return 127
