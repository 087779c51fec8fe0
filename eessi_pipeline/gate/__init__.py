"""The gate: only a complete, green, signed test run of the exact tarball opens ingestion.

``record`` (what a test run proves, from JUnit and ReFrame reports), ``signing``
(ssh-keygen -Y sign/verify, EESSI's scheme), ``policy`` (what must be proven, as data),
``decide`` (the pure decision), ``staging`` (new → approved → ingested | rejected) and
``publish`` (verify, decide, ingest in a safe order, audit).
"""
