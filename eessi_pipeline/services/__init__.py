"""The filesystem layer's local services: nginx Stratum 0 and Stratum 1, and a squid forward proxy.

Modules: ``nginx`` and ``squid`` (pure generators of configuration files and argument vectors),
``stratum1`` (the replica web root and its ``info/v1`` JSON), ``sockets`` (facts about listening
sockets and processes, read from ``/proc``), and ``stack`` (start, stop and status of the three
services, with their state in ``<state>/services/``).
Replication and HTTP facts follow the CernVM-FS server documentation.
"""
