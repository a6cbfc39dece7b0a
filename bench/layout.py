"""How many generator processes and source addresses a run needs, and whether it fits.

Three budgets bound a run on one box:

- **open files per generator process** (``RLIMIT_NOFILE``; the workers raise
  their soft limit to the hard one): each holds its devices' sockets, its HTTP
  connections and a few pipes;
- **ephemeral ports per source address**: every client socket is bound to
  ``127.0.0.x`` before it connects, so one address gives at most the
  ``ip_local_port_range`` (about 28,000 ports); the devices are spread over
  ``--source-ips`` addresses.  The kernel's search for a free port grows
  with the ports taken on that address (most of all past half the range),
  so a run that picks its addresses itself keeps each under
  ``PORT_SPREAD`` of the range; a given ``--source-ips`` is only held to
  ``PORT_MARGIN``;
- **open files per server process** (the soft limit the server inherits from
  this process): a node holds its share of the device sockets and of the
  generator's HTTP connections, plus its listeners, storage connections and
  logs.  With ``reuse_port`` the kernel hashes connections over the nodes, so
  a node's share is the mean plus a margin for the hash's spread.

``plan_layout`` picks the generator processes and source addresses itself
when they are not given, and raises ``LayoutError`` naming the budget a layout
breaks (with the numbers), instead of letting a run fail halfway with
``EMFILE`` or ``EADDRNOTAVAIL``.
"""

from __future__ import annotations

import math
import resource
from dataclasses import dataclass

__all__ = [
    "GEN_RESERVE_FDS",
    "SERVER_RESERVE_FDS",
    "PORT_MARGIN",
    "MAX_SOURCE_IPS",
    "PORT_SPREAD",
    "DEFAULT_SOURCE_IPS",
    "Layout",
    "LayoutError",
    "fd_limits",
    "node_share",
    "plan_layout",
    "port_range_size",
]

#: Files a generator process holds besides its sockets (pipes, epoll, imports).
GEN_RESERVE_FDS = 200
#: Files a server process holds besides device and HTTP sockets (listeners, storage, logs).
SERVER_RESERVE_FDS = 300
#: Share of an address's ephemeral ports a run may plan to use (the rest is slack
#: for TIME_WAIT sockets and other programs).
PORT_MARGIN = 0.75
#: Share of an address's ephemeral ports a run that picks its own addresses
#: plans to use.  Past about half the range every connect searched long: a
#: 12-node ramp fell from ~950 to ~150 connections/s, the generator's CPU all
#: in the kernel (bench/README.md, "Source ports").
PORT_SPREAD = 0.25
#: Source addresses 127.0.0.2 .. 127.0.0.251.
MAX_SOURCE_IPS = 250
#: Source addresses used when more are not needed.
DEFAULT_SOURCE_IPS = 8
#: Devices per generator process when nothing else limits it (one core drives
#: about that many connects per second; more processes only share the core).
DEVICES_PER_PROC = 15000


class LayoutError(ValueError):
    """A run that would break a budget; the message names it and the numbers."""


@dataclass(frozen=True)
class Layout:
    """What a run will use: generator processes, source addresses, sockets per process."""

    procs: int
    source_ips: int
    devices_per_proc: int
    fds_per_proc: int
    gen_fd_limit: int
    sockets_per_ip: int
    ports_per_ip: int
    nodes: int
    sockets_per_node: int
    server_fd_limit: int

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def port_range_size(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> int:
    """Ephemeral ports per address (28,232 with Linux's default 32768-60999)."""
    try:
        with open(path) as f:
            lo, hi = (int(x) for x in f.read().split()[:2])
    except (OSError, ValueError):
        return 28232
    return max(1, hi - lo + 1)


def fd_limits() -> tuple[int, int]:
    """(generator limit, server limit): the hard limit the workers raise their soft limit
    to, and the soft limit a server started by this process inherits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft == resource.RLIM_INFINITY:
        soft = hard
    return int(hard), int(soft)


def node_share(connections: int, nodes: int, hashed: bool) -> int:
    """Most connections one of ``nodes`` is expected to hold.

    ``hashed`` (``reuse_port``): the kernel spreads connections by a hash, a
    binomial spread around the mean; plan for the mean plus four standard
    deviations.  Otherwise the generator deals them round robin: the ceiling.
    """
    if nodes <= 1:
        return connections
    mean = connections / nodes
    if not hashed:
        return math.ceil(mean)
    sd = math.sqrt(connections * (1 / nodes) * (1 - 1 / nodes))
    return math.ceil(mean + 4 * sd)


def plan_layout(
    devices: int,
    *,
    nodes: int = 1,
    shared_ports: bool = False,
    http_conns: int = 0,
    procs: int | None = None,
    source_ips: int | None = None,
    gen_fd_limit: int,
    server_fd_limit: int,
    ports_per_ip: int,
    check_server: bool = True,
) -> Layout:
    """Pick (or check) generator processes and source addresses for ``devices``.

    ``http_conns``: the generator's HTTP connections on top of the devices
    (notify's in-flight slots, churn's one per device), spread like the
    devices.  ``procs`` / ``source_ips``: what the user asked for (None: pick,
    at least ``DEFAULT_SOURCE_IPS`` addresses);
    a given value that does not fit is refused (``LayoutError``), never adjusted.
    ``check_server``: False when the server is not ours (``--target``).
    """
    if devices < 1:
        raise LayoutError(f"{devices} devices: need at least one")
    sockets = devices + http_conns
    per_socket_devices = sockets / devices
    room = gen_fd_limit - GEN_RESERVE_FDS
    if room < 1:
        raise LayoutError(f"open files: the generator's limit {gen_fd_limit} leaves no room")
    most_devices = max(1, min(DEVICES_PER_PROC, int(room / per_socket_devices)))
    if procs is None:
        procs = max(1, math.ceil(devices / most_devices))
    devices_per_proc = math.ceil(devices / procs)
    fds_per_proc = math.ceil(sockets / procs) + GEN_RESERVE_FDS
    if fds_per_proc > gen_fd_limit:
        need = math.ceil(sockets / room)
        raise LayoutError(
            f"open files per generator process: {devices:,} devices"
            f"{f' + {http_conns:,} HTTP connections' if http_conns else ''} over {procs} "
            f"process(es) is ~{fds_per_proc:,} files each, above the limit of {gen_fd_limit:,} "
            f"(RLIMIT_NOFILE): use --procs {need} or more, or fewer devices"
        )
    usable = int(ports_per_ip * PORT_MARGIN)
    need_ips = max(1, math.ceil(sockets / usable))
    if source_ips is None:
        want_ips = max(1, math.ceil(sockets / max(1, int(ports_per_ip * PORT_SPREAD))))
        source_ips = min(MAX_SOURCE_IPS, max(want_ips, DEFAULT_SOURCE_IPS))
        if want_ips > DEFAULT_SOURCE_IPS and source_ips % procs:
            # A big run: give every worker a slice of its own (see below).
            source_ips = math.ceil(source_ips / procs) * procs
            if source_ips > MAX_SOURCE_IPS:
                source_ips = max(need_ips, MAX_SOURCE_IPS // procs * procs)
    source_ips = max(1, source_ips)
    if source_ips > MAX_SOURCE_IPS:
        raise LayoutError(
            f"source addresses: {sockets:,} client sockets need {need_ips} addresses of "
            f"~{usable:,} usable ports each, more than the {MAX_SOURCE_IPS} the bench uses"
        )
    # A worker gets its own slice of the addresses when there are at least as many
    # addresses as workers (bench.scenarios._start_group); otherwise all share them.
    if source_ips >= procs:
        per_worker_ips = source_ips // procs
        sockets_per_ip = math.ceil(math.ceil(sockets / procs) / per_worker_ips)
    else:
        sockets_per_ip = math.ceil(sockets / source_ips)
    if sockets_per_ip > usable:
        raise LayoutError(
            f"ephemeral ports: ~{sockets_per_ip:,} client sockets per source address, above "
            f"~{usable:,} ({PORT_MARGIN:.0%} of the {ports_per_ip:,}-port "
            f"ip_local_port_range): use --source-ips {max(need_ips, procs)} or more"
        )
    per_node = node_share(sockets, nodes, shared_ports) + SERVER_RESERVE_FDS
    if check_server and per_node > server_fd_limit:
        want = nodes
        while want < 1000 and (
            node_share(sockets, want, shared_ports) + SERVER_RESERVE_FDS > server_fd_limit
        ):
            want += 1
        raise LayoutError(
            f"open files per server process: {sockets:,} connections over {nodes} node(s) is "
            f"up to ~{per_node:,} files on one node, above its limit of {server_fd_limit:,} "
            f"(RLIMIT_NOFILE): use --nodes {want} or more (memcached), or fewer devices"
        )
    return Layout(
        procs=procs,
        source_ips=source_ips,
        devices_per_proc=devices_per_proc,
        fds_per_proc=fds_per_proc,
        gen_fd_limit=gen_fd_limit,
        sockets_per_ip=sockets_per_ip,
        ports_per_ip=ports_per_ip,
        nodes=nodes,
        sockets_per_node=per_node,
        server_fd_limit=server_fd_limit,
    )
