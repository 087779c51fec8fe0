"""Project-wide pytest set-up.

The project's own plugin (``eessi_pipeline.pytest_plugin``: ``arch_<target>`` markers, the
``compat_layer``/``software_build`` fixtures, ``--eessi-scheduler``, the gate) is loaded through its
``pytest11`` entry point, as any installed pytest plugin is.  ``pytester`` lets the plugin's own tests
run pytest on generated test files.
"""

pytest_plugins = ("pytester",)
