"""End-to-end: the ``use_webpush`` client protocol against a real ``twistd simplepush``.

The server runs with the memory backend; the device is
``tests.integration.webpush_client.WebPushDevice`` over a real WebSocket.
Message delivery through ``POST /wpush/...`` is tested with the endpoint's
own end-to-end tests.
"""

from __future__ import annotations

import hashlib
import json
import urllib.request
import uuid

import websocket
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from twisted.trial.unittest import SynchronousTestCase

from pushtwisted.ids import is_valid_id, normalize_id
from pushtwisted.tokens import EndpointCrypto, load_or_create_key
from tests.integration.server import ServerProcess
from tests.integration.webpush_client import TIMEOUT, WebPushDevice, application_server_key


class WebPushSessionTests(SynchronousTestCase):
    """A WebPush device (and a SimplePush one) talk to a real pushtwisted process."""

    def setUp(self) -> None:
        config = {"storage": {"backend": "memory"}, "client": {"min_ping_interval": 0}}
        self.server = ServerProcess(self, config)
        self.server.start()

    def device(self) -> WebPushDevice:
        return WebPushDevice.connect(self, self.server.ws_url)

    def crypto(self) -> EndpointCrypto:
        """The server's token keys (generated at its first start, in its state directory)."""
        return EndpointCrypto([load_or_create_key(self.server.state_dir).key])

    def test_hello(self) -> None:
        """A WebPush hello without a UAID gets a fresh one, use_webpush and no broadcasts."""
        device = self.device()
        device.send({"messageType": "hello", "use_webpush": True, "broadcasts": {"x": "1"}})
        reply = device.recv()
        self.assertEqual(
            reply,
            {
                "messageType": "hello",
                "uaid": reply["uaid"],
                "status": 200,
                "use_webpush": True,
                "broadcasts": {},
            },
        )
        self.assertTrue(is_valid_id(reply["uaid"]))

    def test_register_endpoints(self) -> None:
        """register gives /wpush/v1/ without a key and /wpush/v2/ bound to a (padded) key."""
        device = self.device()
        uaid = normalize_id(device.hello())
        v1 = device.register()
        prefix = self.server.endpoint_url + "/wpush/v1/"
        self.assertTrue(v1.endpoint.startswith(prefix), v1.endpoint)
        token = self.crypto().parse_webpush_token(v1.endpoint[len(prefix) :], version=1)
        self.assertEqual((token.uaid, token.chid), (uaid, normalize_id(v1.channel_id)))

        public = ec.generate_private_key(ec.SECP256R1()).public_key()
        key = application_server_key(public, padded=True)
        v2 = device.register(key=key)
        prefix = self.server.endpoint_url + "/wpush/v2/"
        self.assertTrue(v2.endpoint.startswith(prefix), v2.endpoint)
        token = self.crypto().parse_webpush_token(v2.endpoint[len(prefix) :], version=2)
        raw = public.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        self.assertEqual(token.chid, normalize_id(v2.channel_id))
        self.assertEqual(token.key_hash, hashlib.sha256(raw).digest())

    def test_bad_key_keeps_connection(self) -> None:
        """A register key that is not a P-256 point is answered 400; the device goes on."""
        device = self.device()
        device.hello()
        chid = str(uuid.uuid4())
        device.send({"messageType": "register", "channelID": chid, "key": "AAAA"})
        reply = device.recv()
        self.assertEqual((reply["messageType"], reply["status"]), ("register", 400))
        self.assertIn("/wpush/v1/", device.register(channel_id=chid).endpoint)

    def test_uaid_kept_only_for_a_webpush_user(self) -> None:
        """A registered device keeps its UAID; an unknown UAID is replaced."""
        device = self.device()
        uaid = device.hello()
        device.register()
        device.close()
        again = self.device()
        self.assertEqual(again.hello(uaid), uaid)
        stranger = self.device()
        unknown = uuid.uuid4().hex
        self.assertNotEqual(stranger.hello(unknown), unknown)

    def test_commands_without_reply(self) -> None:
        """ack of an unknown id, nack and broadcast_subscribe get no reply; unregister gets 200."""
        device = self.device()
        device.hello()
        subscription = device.register()
        fake = {"channelID": subscription.channel_id, "version": "not-an-id"}
        device.ack(fake)
        device.nack(fake)
        device.send({"messageType": "broadcast_subscribe", "broadcasts": {"a": "1"}})
        device.sync()
        device.unregister(subscription.channel_id)
        device.assert_silent(0.5)

    def test_simplepush_and_webpush_at_once(self) -> None:
        """A SimplePush client and a WebPush device on one server each speak their protocol."""
        simple = websocket.create_connection(self.server.ws_url, timeout=TIMEOUT)
        self.addCleanup(simple.close)
        simple.send(json.dumps({"messageType": "hello", "uaid": "", "channelIDs": []}))
        self.assertEqual(set(json.loads(simple.recv())), {"messageType", "uaid", "status"})
        device = self.device()
        device.hello()
        subscription = device.register()
        chid = str(uuid.uuid4())
        simple.send(json.dumps({"messageType": "register", "channelID": chid}))
        endpoint = json.loads(simple.recv())["pushEndpoint"]
        self.assertIn("/update/", endpoint)
        request = urllib.request.Request(endpoint, data=b"version=7", method="PUT")
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            self.assertEqual(response.status, 200)
        self.assertEqual(
            json.loads(simple.recv()),
            {"messageType": "notification", "updates": [{"channelID": chid, "version": 7}]},
        )
        self.assertIn("/wpush/v1/", subscription.endpoint)
        device.assert_silent(0.5)
