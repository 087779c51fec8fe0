"""CernVM-FS repositories in the real on-disk/HTTP format.

Modules: ``common`` (constants, path hashing, object paths), ``manifest`` and
``whitelist`` (text formats), ``objects`` (content-addressed storage),
``catalog`` (SQLite file catalogs), ``keys`` (signing), ``verify`` and
``reader`` (reading and verifying any repository, ours or the real server's),
``tarcheck`` (tarball validation), ``repository`` (the embedded Stratum 0),
``cvmfs_server`` (the production backend).
"""
