"""Several pushtwisted nodes sharing one store: the UAID directory, node-to-node
routing, request signing and ``SO_REUSEPORT`` listeners.

- ``signing``: HMAC-SHA256 signatures of node-to-node requests (shared secret).
- ``directory``: the ``uaid -> node`` directory (``MemcachedDirectory``).
- ``router``: ``Router``, the ``pushtwisted.routing.Router`` of a cluster,
  which delivers an update wherever the device is.
- ``reuseport``: the ``reuseport:`` endpoint type, listening sockets shared by
  several processes on one host.

The node-to-node HTTP API itself is served by ``pushtwisted.web.internal``.
"""
