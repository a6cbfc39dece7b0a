"""WebPush (RFC 8030, 8291, 8292) building blocks that do no I/O.

- ``errors``: ``WebPushError``, the autopush-shaped JSON error of the WebPush routes.
- ``headers``: the checks of a push request's headers and body size, and the headers
  forwarded to the device.

The decisions these modules implement are those of section 6 of the WebPush reference.
"""

__all__: list[str] = []
