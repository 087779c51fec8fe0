"""The embedded Slurm cluster: configuration (pure, :mod:`.config`), namespace holders (:mod:`.nshold`)
and the manager that starts, checks and stops it (:mod:`.manager`)."""
