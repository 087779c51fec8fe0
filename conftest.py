"""Project-wide pytest set-up: the eessi-pipeline plugin provides arch markers and fixtures."""

pytest_plugins = ("eessi_pipeline.pytest_plugin",)
