"""``qinspect check``, the CI gate, as its own package.

- :mod:`~qinspect.gate.catalogue`: the rules as data (ids, names, severities, texts);
- :mod:`~qinspect.gate.config`: where the settings come from and what each key means;
- :mod:`~qinspect.gate.rules`: one check function per rule, registered by id;
- :mod:`~qinspect.gate.report`: what a run found (cases, findings, the result);
- :mod:`~qinspect.gate.engine`: load, measure, run the rules on one checkpoint;
- :mod:`~qinspect.gate.baseline`: read back an earlier JSON report;
- :mod:`~qinspect.gate.files`: many checkpoints (files and folders) in one run.

Not named ``qinspect/check/``: importing a submodule binds the package as an attribute
of ``qinspect``, which would replace the public function ``qinspect.check()``.
"""
