"""WebPush across a real cluster: two ``twistd simplepush`` nodes sharing one real memcached.

The nodes are ``tests.integration.test_cluster.ClusterTestCase``'s (shared token
key, router secret, memcached and key prefix).  The application server is
``pywebpush``, POSTing to one node's endpoint the subscription a device made on the
other; the device (``tests.integration.webpush_client.WebPushDevice``) decrypts
what arrives.  A message for a connected device crosses the router listeners; one
for a device that is away is stored in memcached and delivered after the device
says hello to the other node.
"""

from __future__ import annotations

import time

from pywebpush import webpush

from tests.integration.server import ServerProcess
from tests.integration.test_cluster import ClusterTestCase, metric_total
from tests.integration.webpush_client import TIMEOUT, Subscription, WebPushDevice


def through(node: ServerProcess, subscription: Subscription) -> dict[str, object]:
    """The subscription's ``info`` with its endpoint moved to ``node``'s endpoint listener."""
    info = subscription.info
    path = str(info["endpoint"]).split("/wpush/", 1)[1]
    info["endpoint"] = f"{node.endpoint_url}/wpush/{path}"
    return info


class WebPushClusterTests(ClusterTestCase):
    """WebPush messages reach a device wherever it is connected, or once it is back."""

    nodes_count = 2

    def post(self, node: ServerProcess, subscription: Subscription, plain: bytes) -> None:
        response = webpush(through(node, subscription), data=plain, ttl=60, timeout=TIMEOUT)
        self.assertEqual(response.status_code, 201, response.text)

    def receive(self, device: WebPushDevice, subscription: Subscription, plain: bytes) -> None:
        message = device.notification()
        self.assertEqual(message["channelID"], subscription.channel_id)
        self.assertEqual(subscription.decrypt(message), plain)
        device.ack(message)

    def test_post_to_one_node_reaches_device_on_the_other(self) -> None:
        """A message POSTed to node A reaches the device connected to node B, once."""
        a, b = self.nodes
        device = WebPushDevice.connect(self, b.ws_url)
        device.hello()
        subscription = device.register()
        self.assertTrue(subscription.endpoint.startswith(b.endpoint_url))
        for n in range(3):
            self.post(a, subscription, f"across {n}".encode())
            self.receive(device, subscription, f"across {n}".encode())
        device.sync()
        device.assert_silent(0.5)
        self.assertEqual(metric_total(a, "pushtwisted_route_outcomes_total", outcome="remote"), 3)

    def test_stored_while_away_delivered_on_the_other_node(self) -> None:
        """Messages POSTed while the device is away arrive after its hello to the other node."""
        a, b = self.nodes
        device = WebPushDevice.connect(self, a.ws_url)
        uaid = device.hello()
        subscription = device.register()
        device.close()
        time.sleep(0.5)  # let node A see the close and clear its directory entry
        self.post(a, subscription, b"first")
        self.post(b, subscription, b"second")
        again = WebPushDevice.connect(self, b.ws_url)
        self.assertEqual(again.hello(uaid), uaid)
        self.receive(again, subscription, b"first")
        self.receive(again, subscription, b"second")
        again.sync()
        again.assert_silent(0.5)
        # Acked on node B: a third connection, to node A, gets nothing.
        third = WebPushDevice.connect(self, a.ws_url)
        self.assertEqual(third.hello(uaid), uaid)
        third.assert_silent(0.5)
