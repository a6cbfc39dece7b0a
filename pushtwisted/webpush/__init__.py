"""WebPush (RFC 8030, 8291, 8292) building blocks that do no I/O.

- ``errors``: ``WebPushError``, the autopush-shaped JSON error of the WebPush routes.
- ``messages``: the client messages of a ``use_webpush`` connection (hello and
  register replies, notifications, acks and nacks).
- ``headers``: the checks of a push request's headers and body size, and the headers
  forwarded to the device.
- ``vapid``: the ``Authorization`` / ``Crypto-Key`` VAPID forms and the ES256 JWT checks.

Endpoint tokens and message ids live in ``pushtwisted.tokens``.  The decisions these
modules implement are those of section 6 of the WebPush reference.
"""

__all__: list[str] = []
