"""Project-wide pytest set-up.

``eessi_pipeline.pytest_plugin`` registers the ``arch_<target>`` markers from the
matrix and provides the acceptance fixtures; ``eessi_pipeline.compat.fixtures`` provides
``compat_layer(family)``; ``eessi_pipeline.build.fixtures`` provides
``software_build(target)``; ``eessi_pipeline.checks.pytest_scheduler`` adds
``--eessi-scheduler local|slurm`` for the ReFrame checks; ``pytester`` lets the plugin's own
tests run pytest on generated test files.
"""

pytest_plugins = (
    "eessi_pipeline.pytest_plugin",
    "eessi_pipeline.compat.fixtures",
    "eessi_pipeline.build.fixtures",
    "eessi_pipeline.checks.pytest_scheduler",
    "eessi_pipeline.gate.pytest_gate",
    "pytester",
)
