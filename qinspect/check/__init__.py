"""``qinspect check``, the CI gate, as its own package.

- :mod:`~qinspect.check.catalogue`: the rules as data (ids, names, severities, texts);
- :mod:`~qinspect.check.config`: where the settings come from and what each key means;
- :mod:`~qinspect.check.rules`: one check function per rule, registered by id;
- :mod:`~qinspect.check.report`: what a run found (cases, findings, the result);
- :mod:`~qinspect.check.engine`: load, measure, run the rules on one checkpoint;
- :mod:`~qinspect.check.baseline`: read back an earlier JSON report;
- :mod:`~qinspect.check.files`: many checkpoints (files and folders) in one run.

This module stays empty on purpose: ``qinspect/__init__.py`` imports it before it
defines the public function ``qinspect.check()``, so the function (not this package)
is what ``qinspect.check`` names; importing the submodules later does not rebind it.
"""
