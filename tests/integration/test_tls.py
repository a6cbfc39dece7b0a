"""TLS end to end: both listeners on ``ssl:``, a ``wss://`` client and an ``https://`` PUT.

The test makes a self-signed certificate for 127.0.0.1 (with ``cryptography``)
in a temporary directory, starts the real server with it and trusts only that
certificate on the client side, so the handshakes are verified for real.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import urllib.request
from pathlib import Path

import websocket
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.trial.unittest import SynchronousTestCase

from tests.integration.server import ServerProcess

TIMEOUT = 5.0


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """Write a self-signed certificate for IP 127.0.0.1 and its key; return (key, cert)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path = directory / "key.pem"
    cert_path = directory / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


class TLSTests(SynchronousTestCase):
    """Both listeners behind TLS."""

    def test_wss_register_and_https_put(self) -> None:
        """When both listeners use ssl:, a wss:// client registers and an https PUT reaches it."""
        directory = Path(self.mktemp()).resolve()
        directory.mkdir(parents=True)
        key, cert = make_certificate(directory)
        server = ServerProcess(self, {"storage": {"backend": "memory"}})
        tls = f"interface=127.0.0.1:privateKey={key}:certKey={cert}"
        server.config["websocket"]["listen"] = f"ssl:{server.ws_port}:{tls}"
        server.config["endpoint"]["listen"] = f"ssl:{server.endpoint_port}:{tls}"
        public_url = f"https://127.0.0.1:{server.endpoint_port}"
        server.config["endpoint"]["public_url"] = public_url
        server.start()

        ws = websocket.create_connection(
            f"wss://127.0.0.1:{server.ws_port}/",
            timeout=TIMEOUT,
            sslopt={"ca_certs": str(cert)},
        )
        self.addCleanup(ws.close)
        ws.send(json.dumps({"messageType": "hello", "uaid": "", "channelIDs": []}))
        self.assertEqual(json.loads(ws.recv())["status"], 200)
        channel = "01234567-89ab-cdef-0123-456789abcdef"
        ws.send(json.dumps({"messageType": "register", "channelID": channel}))
        reply = json.loads(ws.recv())
        self.assertEqual(reply["status"], 200, reply)
        endpoint = reply["pushEndpoint"]
        self.assertTrue(endpoint.startswith(public_url + "/update/"), endpoint)

        context = ssl.create_default_context(cafile=str(cert))
        request = urllib.request.Request(
            endpoint,
            data=b"version=7",
            method="PUT",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        with urllib.request.urlopen(request, timeout=TIMEOUT, context=context) as response:
            self.assertEqual(response.status, 200)
        notification = json.loads(ws.recv())
        self.assertEqual(notification["messageType"], "notification")
        self.assertEqual(notification["updates"], [{"channelID": channel, "version": 7}])

        # A plain GET on the wss:// port is handed to its web site through TLS.
        health = f"https://127.0.0.1:{server.ws_port}/health"
        with urllib.request.urlopen(health, timeout=TIMEOUT, context=context) as response:
            self.assertEqual(response.status, 200)
            self.assertEqual(json.loads(response.read())["storage"], "OK")
