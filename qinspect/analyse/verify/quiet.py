"""Keep third-party libraries' chatter off the user's terminal while verify runs them.

torchao announces optional CUDA libraries it cannot load and torch's pytree deprecations;
transformers prints a load report (for compressed-tensors checkpoints it lists the
``input_scale`` keys it does not use as UNEXPECTED), deprecation notices and a progress
bar. None of it is about the user's file, and the load report reads like a finding: verify
says what matters itself. Errors still surface as exceptions.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

LOGGERS = ("torchao", "torch.utils._pytree", "transformers", "compressed_tensors",
           "accelerate")


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """Loggers of :data:`LOGGERS` at ERROR and Python warnings ignored for the duration;
    everything restored afterwards. Code that imports transformers inside also needs
    :func:`quiet_transformers` (its import resets its own logger)."""
    loggers = [logging.getLogger(name) for name in LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' own verbosity at ERROR and its progress bars off (it imports
    transformers), then restored."""
    from transformers.utils import logging as tf_logging

    verbosity = tf_logging.get_verbosity()
    bars = bool(tf_logging.is_progress_bar_enabled())
    tf_logging.set_verbosity_error()
    tf_logging.disable_progress_bar()
    try:
        with quiet_libraries():
            yield
    finally:
        tf_logging.set_verbosity(verbosity)
        if bars:
            tf_logging.enable_progress_bar()
