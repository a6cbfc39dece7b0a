"""Endpoint types of pushtwisted for ``serverFromString`` (and so for every listener).

- ``reuseport:PORT[:interface=ADDR][:backlog=N]``: a TCP listener with
  ``SO_REUSEPORT`` (``pushtwisted.cluster.reuseport``);
- ``pushtwisted-listener:BACKLOG:REUSE_PORT:<description>``: a config
  section's ``listen`` with its ``backlog`` and ``reuse_port``
  (``pushtwisted.listeners``; written by ``tap``, not by operators).

Twisted imports every module here to list plugins: the two modules imported
below load only the standard library, Twisted and zope.
"""

from pushtwisted.cluster.reuseport import ReusePortParser
from pushtwisted.listeners import ListenerParser

reuseport = ReusePortParser()
pushtwistedListener = ListenerParser()
