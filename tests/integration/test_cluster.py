"""A real cluster: three ``twistd simplepush`` nodes sharing one real memcached.

Each node is a separate process with its own WebSocket, endpoint and router
ports on 127.0.0.1; all share the token key, the router secret, the memcached
server and a key prefix unique to the test.  Devices are blocking
``websocket-client`` sockets; every update gets a distinct version, every
received update is acknowledged and counted, so the tests prove that each
update arrives exactly once on a live socket, wherever the device is and
whichever node the application server reached.

Every wait is bounded: a missing notification fails the test.
"""

from __future__ import annotations

import json
import random
import secrets
import signal
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import websocket
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from pushtwisted.tokens import generate_key
from tests.integration.memcached_fixture import shared_memcached
from tests.integration.server import ServerProcess

#: Seconds any single wait may take.
TIMEOUT = 10.0
CHANNELS_PER_DEVICE = 2


def put(url: str, version: int) -> int:
    """PUT ``version=<version>`` to ``url``; return the HTTP status."""
    body = f"version={version}".encode()
    request = urllib.request.Request(url, data=body, method="PUT")
    request.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as e:
        e.read()
        return int(e.code)


def metric_total(node: ServerProcess, name: str, **labels: str) -> float:
    """Return the sum of the samples of ``name`` on ``node``'s ``/metrics`` with ``labels``."""
    with urllib.request.urlopen(f"{node.endpoint_url}/metrics", timeout=TIMEOUT) as response:
        text = response.read().decode("utf-8")
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


class Device:
    """One SimplePush device: a UAID, its channels, and what it received.

    ``received`` counts every ``(chid, version)`` delivered on any of the
    device's sockets over the test; every update received is acked at once.
    """

    def __init__(self, testcase: SynchronousTestCase, name: str) -> None:
        self.testcase = testcase
        self.name = name
        self.uaid = ""
        self.tokens: dict[str, str] = {}
        self.received: Counter[tuple[str, int]] = Counter()
        self.ws: websocket.WebSocket | None = None
        self.node: ServerProcess | None = None

    # -- socket ----------------------------------------------------------------

    def connect(self, node: ServerProcess) -> None:
        """Open a socket to ``node`` and say hello (with the UAID and channels, if any)."""
        self.ws = websocket.create_connection(node.ws_url, timeout=TIMEOUT)
        self.testcase.addCleanup(self.ws.close)
        self.node = node
        self.send({"messageType": "hello", "uaid": self.uaid, "channelIDs": list(self.tokens)})
        reply = self.next_reply("hello")
        self.testcase.assertEqual(reply.get("status"), 200, reply)
        if self.uaid:
            self.testcase.assertEqual(reply["uaid"], self.uaid)
        self.uaid = reply["uaid"]

    def send(self, message: object) -> None:
        assert self.ws is not None
        self.ws.send(json.dumps(message))

    def _recv(self, timeout: float) -> Any | None:
        """Return the next message (None on timeout); notifications are counted and acked."""
        assert self.ws is not None
        self.ws.settimeout(timeout)
        try:
            text = self.ws.recv()
        except websocket.WebSocketTimeoutException:
            return None
        if not text:
            raise websocket.WebSocketConnectionClosedException("closed")
        message = json.loads(text)
        if message.get("messageType") == "notification":
            updates = message.get("updates", [])
            for update in updates:
                self.received[(update["channelID"], update["version"])] += 1
            self.send({"messageType": "ack", "updates": updates})
        return message

    def next_reply(self, kind: str) -> Any:
        """Return the next message of ``kind`` (notifications before it are counted)."""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            message = self._recv(deadline - time.monotonic())
            if message is not None and message.get("messageType") == kind:
                return message
        self.testcase.fail(f"{self.name}: no {kind} reply within {TIMEOUT}s")

    def register(self) -> None:
        """Register a new channel and keep its token."""
        chid = str(uuid.uuid4())
        self.send({"messageType": "register", "channelID": chid})
        reply = self.next_reply("register")
        self.testcase.assertEqual(reply.get("status"), 200, reply)
        self.tokens[chid] = reply["pushEndpoint"].rsplit("/", 1)[1]

    def sync(self) -> None:
        """Ping and wait for the pong: every message sent before (acks) was handled."""
        assert self.ws is not None
        self.ws.send("{}")
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            message = self._recv(deadline - time.monotonic())
            if message == {}:
                return
        self.testcase.fail(f"{self.name}: no pong within {TIMEOUT}s")

    def wait_for(self, expected: set[tuple[str, int]]) -> None:
        """Read until every expected update arrived (bounded), then for a moment more."""
        deadline = time.monotonic() + TIMEOUT
        while not expected <= set(self.received) and time.monotonic() < deadline:
            self._recv(max(0.01, deadline - time.monotonic()))
        missing = expected - set(self.received)
        self.testcase.assertFalse(missing, f"{self.name}: never received {sorted(missing)}")

    def drain(self, seconds: float) -> None:
        """Read (and count) whatever arrives within ``seconds``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._recv(max(0.01, deadline - time.monotonic()))

    def wait_closed(self) -> tuple[int | None, str]:
        """Read until the server closes the socket; return the close code and reason."""
        assert self.ws is not None
        deadline = time.monotonic() + TIMEOUT
        self.ws.settimeout(TIMEOUT)
        while time.monotonic() < deadline:
            try:
                opcode, frame = self.ws.recv_data_frame(control_frame=True)
            except websocket.WebSocketTimeoutException:
                break
            except (websocket.WebSocketConnectionClosedException, OSError):
                return None, ""
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                data = frame.data or b""
                code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
                return code, data[2:].decode("utf-8", "replace")
            if opcode == websocket.ABNF.OPCODE_TEXT:
                message = json.loads(frame.data)
                if message.get("messageType") == "notification":
                    for update in message.get("updates", []):
                        self.received[(update["channelID"], update["version"])] += 1
        self.testcase.fail(f"{self.name}: socket not closed within {TIMEOUT}s")

    def is_disconnected(self) -> bool:
        """Return True once the socket is closed by the peer (reads EOF or reset)."""
        try:
            message = self._recv(0.5)
        except (websocket.WebSocketConnectionClosedException, OSError):
            return True
        return message is None and not self.ws.connected  # type: ignore[union-attr]


class ClusterTestCase(SynchronousTestCase):
    """Three nodes sharing memcached, a token key and a router secret."""

    nodes_count = 3
    parallel_start = True

    def setUp(self) -> None:
        memcached = shared_memcached()
        key = generate_key()
        secret = secrets.token_urlsafe(24)
        prefix = f"ptc-{uuid.uuid4().hex[:8]}:"
        self.nodes: list[ServerProcess] = []
        for _ in range(self.nodes_count):
            node = ServerProcess(
                self,
                {
                    "server": {"shutdown_timeout": 2.0},
                    "client": {"min_ping_interval": 0, "retry_interval": 600.0},
                    "crypto": {"keys": [key]},
                    "storage": {
                        "backend": "memcached",
                        "servers": [memcached],
                        "key_prefix": prefix,
                    },
                },
                extra_ports=1,
            )
            router_port = node.extra_ports[0]
            node.config["router"] = {
                "listen": f"tcp:{router_port}:interface=127.0.0.1",
                "public_url": f"http://127.0.0.1:{router_port}",
                "secret": secret,
                "timeout": 2.0,
            }
            self.nodes.append(node)
        self.prepare()
        if self.parallel_start:
            # Side by side (each start() is bounded); a failure is re-raised here.
            with ThreadPoolExecutor(self.nodes_count) as pool:
                for started in [pool.submit(node.start) for node in self.nodes]:
                    started.result()
        else:
            for node in self.nodes:
                node.start()
        self.random = random.Random(1234)

    def prepare(self) -> None:
        """Adjust the nodes' configuration before they start (a hook for subclasses)."""

    def devices(self, per_node: int) -> list[Device]:
        """Connect ``per_node`` devices to each node, each with its channels."""
        devices = []
        for n, node in enumerate(self.nodes):
            for i in range(per_node):
                device = Device(self, f"node{n}-device{i}")
                device.connect(node)
                for _ in range(CHANNELS_PER_DEVICE):
                    device.register()
                devices.append(device)
        return devices

    def put_round(
        self, devices: list[Device], version: int, nodes: list[ServerProcess]
    ) -> dict[tuple[str, str], int]:
        """PUT ``version`` to every channel of ``devices``, each through a random node of
        ``nodes``, from 8 threads at once; return the status by (uaid, chid)."""
        jobs = [
            (device.uaid, chid, f"{self.random.choice(nodes).endpoint_url}/update/{token}")
            for device in devices
            for chid, token in device.tokens.items()
        ]
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda job: put(job[2], version), jobs))
        return {
            (uaid, chid): status for (uaid, chid, _), status in zip(jobs, statuses, strict=True)
        }

    def assertExactlyOnce(self, devices: list[Device], versions: list[int]) -> None:
        """Every channel of every device got each version once, and nothing else."""
        for device in devices:
            expected = {(chid, v) for chid in device.tokens for v in versions}
            device.wait_for(expected)
        for device in devices:
            device.drain(0.3)
        for device in devices:
            expected = Counter({(chid, v): 1 for chid in device.tokens for v in versions})
            self.assertEqual(device.received, expected, device.name)


class ClusterDeliveryTests(ClusterTestCase):
    """Updates reach devices wherever they are connected, exactly once."""

    def test_every_update_once(self) -> None:
        """PUTs to random nodes for devices on every node: all 200, each delivered once."""
        devices = self.devices(per_node=3)
        versions = [1, 2, 3, 4, 5]
        for version in versions:
            statuses = self.put_round(devices, version, self.nodes)
            self.assertEqual(set(statuses.values()), {200}, statuses)
        self.assertExactlyOnce(devices, versions)
        # Two PUTs in three reached another node than the device's: they were
        # forwarded over the router listeners, and nothing fell back to storage.
        remote = sum(
            metric_total(n, "pushtwisted_route_outcomes_total", outcome="remote")
            for n in self.nodes
        )
        local = sum(
            metric_total(n, "pushtwisted_route_outcomes_total", outcome="local") for n in self.nodes
        )
        self.assertEqual(remote + local, len(devices) * CHANNELS_PER_DEVICE * len(versions))
        self.assertGreater(remote, 0)
        received = sum(
            metric_total(n, "pushtwisted_router_received_total", kind="push", status="200")
            for n in self.nodes
        )
        self.assertEqual(received, remote)

    def test_router_listener_refuses_unsigned(self) -> None:
        """A request to a router listener without a good signature is answered 401."""
        router_url = str(self.nodes[0].config["router"]["public_url"])
        url = f"{router_url}/push/{uuid.uuid4().hex}"
        body = json.dumps({"channelID": "x", "version": 1}).encode()
        request = urllib.request.Request(url, data=body, method="PUT")
        request.add_header("X-Push-Timestamp", str(int(time.time())))
        request.add_header("X-Push-Signature", "0" * 64)
        with self.assertRaises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=TIMEOUT)
        self.assertEqual(caught.exception.code, 401)
        caught.exception.close()

    def test_offline_devices(self) -> None:
        """PUTs for disconnected devices are 202; they arrive once after a hello elsewhere."""
        devices = self.devices(per_node=2)
        for device in devices:
            assert device.ws is not None
            device.ws.close()
        # Let the nodes see the closes and clear their directory entries.
        time.sleep(0.5)
        statuses = self.put_round(devices, 7, self.nodes)
        self.assertEqual(set(statuses.values()), {202}, statuses)
        for device in devices:
            device.connect(self.random.choice(self.nodes))
        self.assertExactlyOnce(devices, [7])
        statuses = self.put_round(devices, 8, self.nodes)
        self.assertEqual(set(statuses.values()), {200}, statuses)
        self.assertExactlyOnce(devices, [7, 8])


class ClusterNodeLossTests(ClusterTestCase):
    """A node killed mid-run loses nothing: its devices reconnect and catch up."""

    def test_node_killed(self) -> None:
        """SIGKILL one node while the others carry updates: theirs keep arriving (200);
        PUTs for the dead node's devices are 202 and arrive once they reconnect."""
        devices = self.devices(per_node=2)
        statuses = self.put_round(devices, 1, self.nodes)
        self.assertEqual(set(statuses.values()), {200}, statuses)
        self.assertExactlyOnce(devices, [1])
        for device in devices:
            device.sync()  # acks handled: nothing is re-sent at the next hello

        dead, alive = self.nodes[0], self.nodes[1:]
        orphans = [d for d in devices if d.node is dead]
        others = [d for d in devices if d.node is not dead]
        self.assertTrue(orphans and others)
        # The kill lands in the middle of a round for the devices of the other
        # nodes (sent to the surviving nodes, as a load balancer would).
        with ThreadPoolExecutor(1) as background:
            during = background.submit(self.put_round, others, 2, alive)
            self.assertEqual(dead.stop(signal.SIGKILL), -signal.SIGKILL)
            statuses = during.result(timeout=2 * TIMEOUT)
        self.assertEqual(set(statuses.values()), {200}, statuses)
        for device in orphans:
            self.assertTrue(device.is_disconnected(), device.name)

        # While they are away: stored, answered 202 by the surviving nodes (the
        # forward to the dead node is refused, its directory entry cleared).
        statuses = self.put_round(orphans, 2, alive)
        self.assertEqual(set(statuses.values()), {202}, statuses)

        # They reconnect through the load balancer (here: a surviving node).
        for i, device in enumerate(orphans):
            device.connect(alive[i % len(alive)])
        self.assertExactlyOnce(devices, [1, 2])

        statuses = self.put_round(devices, 3, alive)
        self.assertEqual(set(statuses.values()), {200}, statuses)
        self.assertExactlyOnce(devices, [1, 2, 3])


class ClusterTakeoverTests(ClusterTestCase):
    """The newest connection of a UAID wins across nodes."""

    def test_takeover(self) -> None:
        """The UAID connecting to node 2 closes node 1's socket; updates go to node 2 only."""
        first = Device(self, "first")
        first.connect(self.nodes[0])
        first.register()
        chid = next(iter(first.tokens))
        token = first.tokens[chid]
        self.assertEqual(put(f"{self.nodes[2].endpoint_url}/update/{token}", 1), 200)
        first.wait_for({(chid, 1)})
        first.sync()

        second = Device(self, "second")
        second.uaid, second.tokens = first.uaid, dict(first.tokens)
        second.connect(self.nodes[1])
        code, reason = first.wait_closed()
        self.assertEqual(code, 1000, reason)

        for version, node in ((2, self.nodes[0]), (3, self.nodes[1]), (4, self.nodes[2])):
            self.assertEqual(put(f"{node.endpoint_url}/update/{token}", version), 200)
        second.wait_for({(chid, 2), (chid, 3), (chid, 4)})
        second.drain(0.3)
        self.assertEqual(second.received, Counter({(chid, 2): 1, (chid, 3): 1, (chid, 4): 1}))
        self.assertEqual(first.received, Counter({(chid, 1): 1}))

    def test_takeover_back(self) -> None:
        """Moving back to the first node closes the second socket in turn."""
        first = Device(self, "first")
        first.connect(self.nodes[0])
        first.register()
        second = Device(self, "second")
        second.uaid, second.tokens = first.uaid, dict(first.tokens)
        second.connect(self.nodes[1])
        self.assertEqual(first.wait_closed()[0], 1000)
        third = Device(self, "third")
        third.uaid, third.tokens = first.uaid, dict(first.tokens)
        third.connect(self.nodes[0])
        self.assertEqual(second.wait_closed()[0], 1000)
        chid, token = next(iter(first.tokens.items()))
        self.assertEqual(put(f"{self.nodes[1].endpoint_url}/update/{token}", 9), 200)
        third.wait_for({(chid, 9)})
        third.drain(0.3)
        self.assertEqual(third.received, Counter({(chid, 9): 1}))


class ClusterReusePortTests(ClusterTestCase):
    """One node per core: two processes share the public ports through ``SO_REUSEPORT``."""

    nodes_count = 2
    parallel_start = False  # distinct process start times tell the processes apart

    def prepare(self) -> None:
        leader = self.nodes[0]
        for node in self.nodes:
            for section in ("websocket", "endpoint"):
                node.config[section]["listen"] = leader.config[section]["listen"]
                node.config[section]["reuse_port"] = True
            node.config["endpoint"]["public_url"] = leader.endpoint_url
            node.ws_port, node.ws_url = leader.ws_port, leader.ws_url
            node.endpoint_port, node.endpoint_url = leader.endpoint_port, leader.endpoint_url

    def start_times(self, attempts: int) -> set[float]:
        """Ask the shared endpoint port for ``/metrics`` on fresh connections; return the
        distinct ``process_start_time_seconds`` seen (one per process that answered)."""
        seen: set[float] = set()
        for _ in range(attempts):
            seen.add(metric_total(self.nodes[0], "process_start_time_seconds"))
            if len(seen) == self.nodes_count:
                break
        return seen

    def test_shared_ports(self) -> None:
        """Devices and app servers use one WebSocket and one endpoint port; the kernel
        spreads the connections over both processes, and every update arrives once."""
        self.assertEqual(len(self.start_times(40)), 2)
        devices = []
        for i in range(8):
            device = Device(self, f"device{i}")
            device.connect(self.nodes[0])
            for _ in range(CHANNELS_PER_DEVICE):
                device.register()
            devices.append(device)
        versions = [1, 2, 3]
        for version in versions:
            statuses = self.put_round(devices, version, [self.nodes[0]])
            self.assertEqual(set(statuses.values()), {200}, statuses)
        self.assertExactlyOnce(devices, versions)
