"""Compatibility layers: a minimal userland per CPU family at ``versions/<v>/compat/linux/<family>``.

One module per concern: :mod:`.packageset` (the data), :mod:`.layout` (paths), :mod:`.backend`
(the ``Backend`` protocol and its table), :mod:`.debian` (the embedded default) with :mod:`.apt`,
:mod:`.elf`, :mod:`.relocate` and :mod:`.prefixfiles`, :mod:`.gentoo_prefix` (EESSI's production
method, with the playbook in ``ansible/``), :mod:`.state` (build once, reuse), :mod:`.pack` (tarball
and ``.meta.txt``), :mod:`.runner` (the layer at its prefix, through :mod:`eessi_pipeline.nslaunch`),
:mod:`.acceptance` and :mod:`.rfm_runner` (the checks), :mod:`.fixtures` (``compat_layer``).
"""
