"""Start and stop the server under test (and memcached), by PID, on free loopback ports."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "REPO_ROOT",
    "ServerHandle",
    "free_port",
    "render_config",
    "start_server",
    "stop_server",
    "rss_kb",
    "cpu_seconds",
    "wait_port",
    "snapshot_source",
    "ClusterHandle",
    "cluster_node_config",
    "node_cpus",
    "start_cluster",
    "stop_cluster",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None) -> bool:
    """Poll until ``host:port`` accepts a TCP connection (False on timeout or if proc exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def snapshot_source(dest_parent: str | None = None) -> Path:
    """Copy the server's code (``pushtwisted/``, ``twisted/plugins/``) to a temp dir.

    The servers of one ``bench run`` start from this copy, so every repeat
    measures the same code even while the work tree is being edited.
    """
    root = Path(tempfile.mkdtemp(prefix="pushbench-src-", dir=dest_parent))
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO_ROOT / "pushtwisted", root / "pushtwisted", ignore=ignore)
    plugins = REPO_ROOT / "twisted" / "plugins"
    if plugins.is_dir():
        shutil.copytree(plugins, root / "twisted" / "plugins", ignore=ignore)
    return root


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def render_config(sections: dict[str, dict[str, Any]]) -> str:
    """A TOML file from ``{section: {key: value}}`` (strings, numbers, bools, lists)."""
    out = []
    for name, table in sections.items():
        out.append(f"[{name}]")
        for k, v in table.items():
            out.append(f"{k} = {_toml_value(v)}")
        out.append("")
    return "\n".join(out)


def rss_kb(pid: int) -> int | None:
    """VmRSS of ``pid`` in KiB (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


@dataclass
class ServerHandle:
    backend: str
    pid: int
    ws_port: int
    http_port: int
    state_dir: Path
    log_path: Path
    config_text: str
    command: list[str]
    cpus: list[int] | None
    proc: subprocess.Popen[bytes] | None = None
    memcached: subprocess.Popen[bytes] | None = None
    memcached_port: int | None = None
    keep_state: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def memcached_pid(self) -> int | None:
        """The PID of the memcached this server started (None: none, or not ours)."""
        return self.memcached.pid if self.memcached is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


def _start_memcached(
    cpus: list[int] | None, memory_mb: int = 1024
) -> tuple[subprocess.Popen[bytes], int]:
    exe = shutil.which("memcached") or "/usr/bin/memcached"
    if not os.path.exists(exe):
        raise RuntimeError("memcached not found (apt-get install memcached)")
    port = free_port()
    cmd = [exe, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", str(memory_mb), "-c", "4096"]
    if os.geteuid() == 0:
        cmd += ["-u", "nobody"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if cpus:
        try:
            os.sched_setaffinity(proc.pid, set(cpus))
        except OSError:
            pass
    if not wait_port("127.0.0.1", port, 10.0, proc):
        _stop_pid(proc, 5.0)
        raise RuntimeError("memcached did not start")
    return proc, port


def start_server(
    backend: str,
    *,
    cpus: list[int] | None = None,
    launcher: str = "twistd",
    extra_config: dict[str, dict[str, Any]] | None = None,
    startup_timeout: float = 30.0,
    backlog: int = 4096,
    keep_state: bool = False,
    src_root: Path | None = None,
    memcached_port: int | None = None,
    ports: tuple[int, int] | None = None,
    ready_port: int | None = None,
) -> ServerHandle:
    """Start ``twistd -n simplepush`` with ``backend`` on free ports; wait until it listens.

    ``src_root`` (default: the repository) is put first on the server's
    ``PYTHONPATH`` and used as its working directory: a ``snapshot_source`` copy.
    ``memcached_port``: use that (already running) memcached instead of starting
    one; it is not stopped with the server.  ``ports``: (ws, http) to listen on.
    ``ready_port``: a port of this process alone (its router listener, opened
    after the public ones) that must accept too before the server counts as up:
    with ``reuse_port`` the public ports may already accept for other nodes.
    """
    src = src_root or REPO_ROOT
    state_dir = Path(tempfile.mkdtemp(prefix=f"pushbench-{backend}-"))
    if ports is not None:
        ws_port, http_port = ports
    else:
        ws_port = free_port()
        http_port = free_port()
        while http_port == ws_port:
            http_port = free_port()
    memcached = None
    mc_port = memcached_port
    storage: dict[str, Any] = {"backend": backend, "path": str(state_dir / "state")}
    if backend == "memcached":
        if mc_port is None:
            memcached, mc_port = _start_memcached(cpus)
        storage["servers"] = [f"127.0.0.1:{mc_port}"]
    sections: dict[str, dict[str, Any]] = {
        "websocket": {"listen": f"tcp:{ws_port}:interface=127.0.0.1", "backlog": backlog},
        "endpoint": {
            "listen": f"tcp:{http_port}:interface=127.0.0.1",
            "public_url": f"http://127.0.0.1:{http_port}",
            "backlog": backlog,
        },
        "client": {"hello_timeout": 60, "min_ping_interval": 0},
        "storage": storage,
    }
    for name, table in (extra_config or {}).items():
        sections.setdefault(name, {}).update(table)
    text = render_config(sections)
    cfg = state_dir / "server.toml"
    cfg.write_text(text)
    if launcher == "module":
        cmd = [sys.executable, "-m", "pushtwisted", "--config", str(cfg)]
    else:
        # The venv's twistd; the repo root on PYTHONPATH lets it find twisted/plugins/simplepush.py.
        twistd = Path(sys.executable).parent / "twistd"
        head = (
            [str(twistd)]
            if twistd.exists()
            else [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
        )
        cmd = [*head, "-n", "--pidfile=", "simplepush", "--config", str(cfg)]
    log_path = state_dir / "server.log"
    logf = open(log_path, "wb")
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(src) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc = subprocess.Popen(
            cmd,
            cwd=str(src),
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    except BaseException:
        logf.close()
        if memcached is not None:
            _stop_pid(memcached, 5.0)
        raise
    logf.close()
    if cpus:
        os.sched_setaffinity(proc.pid, set(cpus))
    handle = ServerHandle(
        backend=backend,
        pid=proc.pid,
        ws_port=ws_port,
        http_port=http_port,
        state_dir=state_dir,
        log_path=log_path,
        config_text=text,
        command=cmd,
        cpus=sorted(os.sched_getaffinity(proc.pid)) if cpus else None,
        proc=proc,
        memcached=memcached,
        memcached_port=mc_port,
        keep_state=keep_state,
    )
    deadline = time.monotonic() + startup_timeout
    ok = all(
        wait_port("127.0.0.1", p, max(0.1, deadline - time.monotonic()), proc)
        for p in (ws_port, http_port, *([ready_port] if ready_port else []))
    )
    if not ok:
        tail = handle.log_tail()
        stop_server(handle)
        raise RuntimeError(f"server did not start ({' '.join(cmd)}); log tail:\n{tail}")
    return handle


def _stop_pid(proc: subprocess.Popen[bytes], grace: float) -> int | None:
    if proc.poll() is not None:
        return proc.returncode
    try:
        os.kill(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return proc.poll()
    try:
        return proc.wait(grace)
    except subprocess.TimeoutExpired:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return proc.wait(5.0)


def stop_server(handle: ServerHandle, grace: float = 15.0) -> None:
    """SIGTERM the server (then SIGKILL after ``grace``) and memcached, by PID; clean up."""
    if handle.proc is not None:
        handle.info["exit_code"] = _stop_pid(handle.proc, grace)
    if handle.memcached is not None:
        _stop_pid(handle.memcached, 5.0)
    if not handle.keep_state:
        shutil.rmtree(handle.state_dir, ignore_errors=True)


# -- a cluster of N nodes on one host ---------------------------------------------


def node_cpus(server_cpus: list[int] | None, n: int) -> list[list[int] | None]:
    """CPUs of each of ``n`` nodes: node i on ``server_cpus[i % len]`` (None: unpinned).

    With ``--pin`` on 2 cores the server side has CPU 0 only, so every node
    (and memcached) shares CPU 0; with more server CPUs the nodes are spread
    one per CPU, round robin.
    """
    if not server_cpus:
        return [None] * n
    return [[server_cpus[i % len(server_cpus)]] for i in range(n)]


def cluster_node_config(
    router_port: int,
    secret: str,
    token_key: str,
    key_prefix: str,
    shared_ports: bool = False,
) -> dict[str, dict[str, Any]]:
    """Config sections that make node ``index`` a member of the bench cluster.

    Shared by every node: the token key (``[crypto] keys``), the router secret and
    the memcached key prefix; per node: its router listener.  By default each node
    keeps its own public WebSocket and endpoint ports (its ``public_url`` is its own
    endpoint): the generator spreads devices over the nodes and PUTs to random
    nodes.  ``shared_ports``: every node listens on the same two public ports with
    ``reuse_port = true`` (the kernel spreads connections over the nodes), as in
    docs/cluster.md "One node per core on one host".
    """
    reuse: dict[str, dict[str, Any]] = {"websocket": {"reuse_port": True}}
    reuse["endpoint"] = {"reuse_port": True}
    return {
        **(reuse if shared_ports else {}),
        "crypto": {"keys": [token_key]},
        "router": {
            "listen": f"tcp:{router_port}:interface=127.0.0.1",
            "public_url": f"http://127.0.0.1:{router_port}",
            "secret": secret,
            "timeout": 2.0,
        },
        "storage": {"key_prefix": key_prefix},
    }


@dataclass
class ClusterHandle:
    """N nodes sharing one private memcached; looks like a ServerHandle where it matters."""

    nodes: list[ServerHandle]
    memcached: subprocess.Popen[bytes] | None
    memcached_port: int
    backend: str = "memcached"
    info: dict[str, Any] = field(default_factory=dict)
    #: Every node listens on the same public ports (``reuse_port``).
    shared_ports: bool = False

    @property
    def memcached_pid(self) -> int | None:
        return self.memcached.pid if self.memcached is not None else None

    @property
    def pid(self) -> int:
        return self.nodes[0].pid

    @property
    def pids(self) -> list[int]:
        return [n.pid for n in self.nodes]

    @property
    def ws_port(self) -> int:
        return self.nodes[0].ws_port

    @property
    def http_port(self) -> int:
        return self.nodes[0].http_port

    @property
    def ws_ports(self) -> list[int]:
        return [n.ws_port for n in self.nodes]

    @property
    def http_ports(self) -> list[int]:
        return [n.http_port for n in self.nodes]

    @property
    def cpus(self) -> list[list[int] | None] | None:
        """Each node's CPUs; None when no node is pinned."""
        per = [n.cpus for n in self.nodes]
        return per if any(per) else None

    @property
    def command(self) -> list[list[str]]:
        return [n.command for n in self.nodes]

    @property
    def config_text(self) -> list[str]:
        return [n.config_text for n in self.nodes]

    def alive(self) -> bool:
        return all(n.alive() for n in self.nodes)

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(
            f"--- node {i} (pid {h.pid}) ---\n{h.log_tail(n)}" for i, h in enumerate(self.nodes)
        )


def start_cluster(
    n: int,
    *,
    cpus: list[int] | None = None,
    launcher: str = "twistd",
    extra_config: dict[str, dict[str, Any]] | None = None,
    keep_state: bool = False,
    src_root: Path | None = None,
    shared_ports: bool = False,
) -> ClusterHandle:
    """One private memcached and ``n`` memcached-backed nodes configured as a cluster.

    ``shared_ports``: all nodes on one WebSocket and one endpoint port with
    ``reuse_port``; each node counts as started when its own router port accepts.
    """
    import secrets
    import uuid

    per_node = node_cpus(cpus, n)
    mc_proc, mc_port = _start_memcached(cpus)
    token_key = base64.urlsafe_b64encode(os.urandom(32)).decode("ascii")
    secret = secrets.token_urlsafe(32)
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    handle = ClusterHandle(
        nodes=[], memcached=mc_proc, memcached_port=mc_port, shared_ports=shared_ports
    )
    taken: set[int] = {mc_port}

    def port() -> int:
        p = free_port()
        while p in taken:
            p = free_port()
        taken.add(p)
        return p

    public = (port(), port()) if shared_ports else None
    try:
        for i in range(n):
            ws_port, http_port = public or (port(), port())
            router_port = port()
            cfg = cluster_node_config(router_port, secret, token_key, prefix, shared_ports)
            for name, table in (extra_config or {}).items():
                cfg.setdefault(name, {}).update(table)
            handle.nodes.append(
                start_server(
                    "memcached",
                    cpus=per_node[i],
                    launcher=launcher,
                    extra_config=cfg,
                    keep_state=keep_state,
                    src_root=src_root,
                    memcached_port=mc_port,
                    ports=(ws_port, http_port),
                    ready_port=router_port,
                )
            )
    except BaseException:
        stop_cluster(handle)
        raise
    return handle


def stop_cluster(handle: ClusterHandle, grace: float = 15.0) -> None:
    """Stop every node (by PID), then memcached."""
    codes = []
    for node in handle.nodes:
        stop_server(node, grace)
        codes.append(node.info.get("exit_code"))
    handle.info["exit_code"] = codes
    if handle.memcached is not None:
        _stop_pid(handle.memcached, 5.0)
