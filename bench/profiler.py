"""``python -m bench profile``: one scenario against a fresh server, profiled with py-spy.

It takes every option of ``run`` (one scenario, one run) and records
``py-spy record --threads --gil`` (``--all-threads``: every running thread,
not only the one holding the GIL) of each server process for exactly the
scenario's measured phase (the connect ramp, the PUTs, the churn cycles): the
scenario tells the ``Target``'s phase hook when that phase starts and ends.
py-spy writes the raw collapsed stacks (``profile-<pid>.txt``: one
``frame;frame;... count`` line per distinct stack, what flamegraph.pl,
inferno and speedscope read); from them the bench writes a speedscope file
(``profile-<pid>.speedscope.json``, open it at speedscope.app or with the
``speedscope`` CLI) and ``top.md``: the top frames by self and by total
samples, per thread group (pool threads ``name-1 .. name-10`` are one group).

py-spy reads the server's memory with ``ptrace`` (``process_vm_readv``): it
needs root or ``CAP_SYS_PTRACE`` (in a container: ``--cap-add SYS_PTRACE``),
and ``kernel.yama.ptrace_scope`` 0 or 1 for a process that is not its child.
The command checks that once before it starts the server.  By default py-spy
pauses the server for each sample (consistent stacks; the pause costs the
server a few percent at 100 Hz).  ``--nonblocking`` does not pause it but
then some stacks are torn (frames of different moments mixed up): use it only
when the pauses would distort what you measure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.meters import Target

__all__ = [
    "Profiler",
    "Stack",
    "add_profile_parser",
    "cmd_profile",
    "find_py_spy",
    "parse_collapsed",
    "speedscope",
    "thread_group",
    "top_frames",
    "top_markdown",
]

_THREAD = re.compile(r"^thread \((0x[0-9a-fA-F]+|\d+)\)(?::\s*(.*))?$")
_FRAME = re.compile(r"^(.*) \((.*):(\d+)\)$")


@dataclass
class Stack:
    """One line of py-spy's raw output: thread (id, name), frames root first, samples."""

    thread_id: str
    thread_name: str
    frames: list[str]
    count: int


def parse_collapsed(lines: Iterable[str]) -> list[Stack]:
    """py-spy ``-f raw`` lines (``--threads``: the first frame is ``thread (ID): NAME``).

    A torn sample may lack the thread's name; it takes the name other lines
    of the same thread id give.  Lines without a count are skipped.
    """
    stacks: list[Stack] = []
    names: dict[str, str] = {}
    for raw in lines:
        line = raw.rstrip("\n")
        stack, sep, count = line.rpartition(" ")
        if not sep or not count.isdigit():
            continue
        frames = stack.split(";") if stack else []
        tid, name = "", ""
        if frames:
            m = _THREAD.match(frames[0])
            if m:
                tid, name = m.group(1), (m.group(2) or "").strip()
                frames = frames[1:]
                if name:
                    names.setdefault(tid, name)
        stacks.append(Stack(tid, name, frames, int(count)))
    for s in stacks:
        if not s.thread_name:
            s.thread_name = names.get(s.thread_id, "")
    return stacks


def thread_group(name: str, tid: str) -> str:
    """Threads of one pool are one group: ``PoolThread-x-3`` -> ``PoolThread-x-*``."""
    if not name:
        return f"thread {tid}" if tid else "all threads"
    return re.sub(r"\d+$", "*", name)


def _function(frame: str) -> str:
    """``f (file.py:12)`` -> ``f (file.py)``: lines of one function are one entry."""
    m = _FRAME.match(frame)
    return f"{m.group(1)} ({m.group(2)})" if m else frame


def top_frames(stacks: list[Stack], n: int = 25) -> dict[str, Any]:
    """Samples per thread group, and each group's top functions by self and total samples."""
    total = sum(s.count for s in stacks)
    groups: dict[str, list[Stack]] = defaultdict(list)
    for s in stacks:
        groups[thread_group(s.thread_name, s.thread_id)].append(s)
    out: dict[str, Any] = {"samples": total, "groups": []}
    for name, ss in sorted(groups.items(), key=lambda kv: -sum(s.count for s in kv[1])):
        samples = sum(s.count for s in ss)
        self_c: Counter[str] = Counter()
        total_c: Counter[str] = Counter()
        for s in ss:
            funcs = [_function(f) for f in s.frames]
            if funcs:
                self_c[funcs[-1]] += s.count
            for f in set(funcs):
                total_c[f] += s.count
        out["groups"].append(
            {
                "group": name,
                "threads": len({s.thread_id for s in ss}),
                "samples": samples,
                "share": round(samples / total, 4) if total else 0.0,
                "self": [(f, c, round(c / total, 4)) for f, c in self_c.most_common(n)],
                "total": [(f, c, round(c / total, 4)) for f, c in total_c.most_common(n)],
            }
        )
    return out


def top_markdown(top: dict[str, Any], title: str) -> str:
    """``top_frames`` as Markdown; percentages are of all samples of the profile."""
    out = [f"## {title}", "", f"{top['samples']:,} samples.", ""]
    out.append("| thread group | threads | samples | share |")
    out.append("|---|---|---|---|")
    for g in top["groups"]:
        out.append(f"| {g['group']} | {g['threads']} | {g['samples']:,} | {g['share']:.1%} |")
    out.append("")
    for g in top["groups"]:
        for kind in ("self", "total"):
            if not g[kind]:
                continue
            out.append(f"### {g['group']}: top by {kind} samples")
            out.append("")
            out.append("| function | samples | of all |")
            out.append("|---|---|---|")
            out.extend(f"| `{f}` | {c:,} | {share:.1%} |" for f, c, share in g[kind])
            out.append("")
    return "\n".join(out)


def speedscope(stacks: list[Stack], name: str) -> dict[str, Any]:
    """A speedscope file (sampled profiles, one per thread) from parsed stacks."""
    frames: list[dict[str, Any]] = []
    index: dict[str, int] = {}
    per_thread: dict[str, dict[str, Any]] = {}
    for s in stacks:
        label = f"{s.thread_name or 'thread'} ({s.thread_id})" if s.thread_id else "all threads"
        prof = per_thread.setdefault(label, {"samples": [], "weights": []})
        ids = []
        for f in s.frames:
            i = index.get(f)
            if i is None:
                i = index[f] = len(frames)
                m = _FRAME.match(f)
                frames.append(
                    {"name": m.group(1), "file": m.group(2), "line": int(m.group(3))}
                    if m
                    else {"name": f}
                )
            ids.append(i)
        prof["samples"].append(ids)
        prof["weights"].append(s.count)
    profiles = [
        {
            "type": "sampled",
            "name": label,
            "unit": "none",
            "startValue": 0,
            "endValue": sum(p["weights"]),
            "samples": p["samples"],
            "weights": p["weights"],
        }
        for label, p in sorted(per_thread.items(), key=lambda kv: -sum(kv[1]["weights"]))
    ]
    return {
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "shared": {"frames": frames},
        "profiles": profiles,
        "name": name,
        "activeProfileIndex": 0,
        "exporter": "pushtwisted bench",
    }


def find_py_spy(explicit: str | None = None) -> str:
    """py-spy next to this Python (the venv), else on PATH; SystemExit when missing."""
    for cand in (explicit, str(Path(sys.executable).parent / "py-spy"), shutil.which("py-spy")):
        if cand and os.access(cand, os.X_OK):
            return cand
    raise SystemExit("py-spy not found: pip install -e '.[bench]' (or pip install py-spy)")


def check_ptrace(py_spy: str) -> None:
    """Attach once to a throwaway Python child: SystemExit with the reason when py-spy cannot."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)"], stdin=subprocess.DEVNULL
    )
    try:
        time.sleep(0.3)
        r = subprocess.run(
            [py_spy, "dump", "--pid", str(child.pid)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        child.kill()
        child.wait()
    if r.returncode != 0:
        raise SystemExit(
            "py-spy cannot read another process here (it needs ptrace: root or "
            "CAP_SYS_PTRACE, and kernel.yama.ptrace_scope <= 1):\n"
            + (r.stderr or r.stdout).strip()[-800:]
        )


@dataclass
class Profiler:
    """The phase hook: py-spy on every server PID while the measured phase runs."""

    py_spy: str
    out_dir: Path
    rate: int = 100
    gil: bool = True
    idle: bool = False
    nonblocking: bool = False
    native: bool = False
    top_n: int = 25
    procs: list[tuple[int, subprocess.Popen[bytes], Path, Path]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    done: bool = False

    def command(self, pid: int, out: Path) -> list[str]:
        cmd = [self.py_spy, "record", "-p", str(pid), "-r", str(self.rate), "-f", "raw"]
        cmd += ["-o", str(out), "--threads"]
        cmd += [flag for flag, on in (("--gil", self.gil), ("--idle", self.idle)) if on]
        cmd += [flag for flag, on in (("--nonblocking", self.nonblocking),) if on]
        return cmd + (["--native"] if self.native else [])

    def __call__(self, target: Target, phase: str, started: bool) -> None:
        if started and not self.procs and not self.done:
            self._start(target, phase)
        elif not started and self.procs:
            self.stop()

    def _start(self, target: Target, phase: str) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.info = {"phase": phase, "dir": str(self.out_dir), "files": [], "errors": []}
        for pid in target.all_pids():
            out = self.out_dir / f"profile-{pid}.txt"
            log = self.out_dir / f"py-spy-{pid}.log"
            with open(log, "wb") as logf:
                cmd = self.command(pid, out)
                proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)
            self.procs.append((pid, proc, out, log))
            self.info.setdefault("commands", []).append(cmd)
        deadline = time.monotonic() + 10.0
        for pid, proc, _out, log in self.procs:
            while time.monotonic() < deadline and proc.poll() is None:
                if b"Sampling process" in log.read_bytes():
                    break
                time.sleep(0.05)
            if proc.poll() is not None:
                self.info["errors"].append(f"py-spy for {pid} exited: {_tail(log)}")
        self.info["t_start"] = time.time()

    def stop(self) -> None:
        """SIGINT every py-spy (it writes its file and exits), then digest the files."""
        self.info["seconds"] = round(time.time() - self.info.get("t_start", time.time()), 3)
        for _pid, proc, _out, _log in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for pid, proc, out, log in self.procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                self.info["errors"].append(f"py-spy for {pid} did not stop; killed")
            if not out.exists():
                self.info["errors"].append(f"no profile for {pid}: {_tail(log)}")
                continue
            self.info["files"].append(self._digest(pid, out))
        self.procs = []
        self.done = True

    def _digest(self, pid: int, raw: Path) -> dict[str, Any]:
        stacks = parse_collapsed(raw.read_text(errors="replace").splitlines())
        title = f"server {pid}, {self.info['phase']} phase"
        scope = raw.with_suffix(".speedscope.json")
        scope.write_text(json.dumps(speedscope(stacks, title)))
        top = top_frames(stacks, self.top_n)
        md = raw.with_name(f"top-{pid}.md")
        md.write_text(top_markdown(top, title) + "\n")
        return {
            "pid": pid,
            "raw": str(raw),
            "speedscope": str(scope),
            "top": str(md),
            "samples": top["samples"],
            "groups": [(g["group"], g["samples"]) for g in top["groups"]],
        }

    def describe(self) -> dict[str, Any]:
        return dict(self.info)


def _tail(path: Path, n: int = 400) -> str:
    try:
        return path.read_text(errors="replace").strip()[-n:]
    except OSError:
        return "(no log)"


def add_profile_parser(
    sub: Any, add_run_options: Callable[[argparse.ArgumentParser], None]
) -> argparse.ArgumentParser:
    """The ``profile`` subcommand: ``run``'s options plus py-spy's."""
    prof: argparse.ArgumentParser = sub.add_parser(
        "profile",
        help="run one scenario on a fresh server and record a py-spy profile of the server "
        "during the measured phase",
    )
    add_run_options(prof)
    prof.add_argument("--profile-dir", type=Path, help="default: <out>/profiles/<stamp>-<name>")
    prof.add_argument("--sample-rate", type=int, default=100, help="samples per second")
    prof.add_argument(
        "--all-threads",
        action="store_true",
        help="sample every running thread (py-spy without --gil; default: --gil, only the "
        "thread holding the GIL)",
    )
    prof.add_argument("--idle", action="store_true", help="include idle threads (py-spy --idle)")
    prof.add_argument(
        "--nonblocking",
        action="store_true",
        help="do not pause the server per sample (less overhead, some torn stacks)",
    )
    prof.add_argument("--native", action="store_true", help="also native frames (py-spy -n)")
    prof.add_argument("--py-spy", dest="py_spy", help="the py-spy executable")
    prof.add_argument("--top", type=int, default=25, help="functions per list in top-*.md")
    return prof


async def cmd_profile(args: argparse.Namespace) -> int:
    """One run of one scenario with the profiler as its phase hook; prints top-*.md."""
    from bench.registry import scenario_names
    from bench.runner import cmd_run

    names = scenario_names(args.scenario)
    if len(names) != 1:
        raise SystemExit("profile runs one scenario: --scenario NAME")
    if args.target and not args.server_pid:
        raise SystemExit("profile with --target needs --server-pid (the process to profile)")
    py_spy = find_py_spy(args.py_spy)
    check_ptrace(py_spy)
    args.repeat = 1
    args.noise_retries = 0
    stamp = time.strftime("%Y%m%dT%H%M%S")
    out_dir = args.profile_dir or args.out / "profiles" / f"{stamp}-{names[0]}-{args.backend}"
    prof = Profiler(
        py_spy,
        out_dir,
        rate=args.sample_rate,
        gil=not args.all_threads,
        idle=args.idle,
        nonblocking=args.nonblocking,
        native=args.native,
        top_n=args.top,
    )
    args.phase_hook = prof
    try:
        code = await cmd_run(args)
    finally:
        if prof.procs:  # the run ended inside the phase without telling the hook
            prof.stop()
    info = prof.describe()
    for f in info.get("files", []):
        print(Path(f["top"]).read_text())
        print(f"raw: {f['raw']}\nspeedscope: {f['speedscope']}", file=sys.stderr)
    for e in info.get("errors", []):
        print(f"profile: {e}", file=sys.stderr)
    if not info.get("files"):
        print("profile: no profile was recorded", file=sys.stderr)
        return 1
    return code
