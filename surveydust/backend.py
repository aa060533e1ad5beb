"""The Keras backend, imported once per process and quietly.

TensorFlow's C++ start-up lines ("All log messages before absl::InitializeLog()",
"oneDNN custom operations are on") ignore ``TF_CPP_MIN_LOG_LEVEL`` in current
releases; they are written to the process's file descriptor 2 while TensorFlow
loads. :func:`keras_module` imports Keras with that descriptor pointed at
``/dev/null`` unless the ``surveydust`` logger is at DEBUG or ``SURVEYDUST_VERBOSE``
is set (``surveydust -v``), so the lines are kept for whoever asks for them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

VERBOSE_ENV = "SURVEYDUST_VERBOSE"  # set by ``surveydust -v``; inherited by worker processes


@contextlib.contextmanager
def _quiet_fd2() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for the duration (Python's sys.stderr is flushed first)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def verbose() -> bool:
    """Whether the user asked for everything (``surveydust -v`` or a DEBUG ``surveydust`` logger)."""
    return logging.getLogger("surveydust").isEnabledFor(logging.DEBUG) or bool(os.environ.get(VERBOSE_ENV))


def ignore_interrupts_in_worker_process() -> None:
    """Ignore SIGINT (Ctrl-C) in this process when it is a worker process started by multiprocessing.

    Ctrl-C in a terminal sends SIGINT to the whole process group: the command and the worker
    processes of its LocalCluster. The command handles it (it stops, shuts the cluster down,
    which ends the workers, and says so in one line); a worker that handled it too would die
    with a ``KeyboardInterrupt`` traceback of its own. This is called by the workers' preload
    (:func:`surveydust.cluster.dask_setup`) and, for the ``surveydust`` command, at the import of
    :mod:`surveydust`, which comes first in a worker's start: multiprocessing's spawn method
    re-runs the parent's main script (the console script, as ``__mp_main__``) before it loads Dask.
    The command's own process, and workers that are threads in it (``processes: false``), keep
    their SIGINT handler.
    """
    mp = sys.modules.get("multiprocessing")  # not imported: not a multiprocessing child
    child = "__mp_main__" in sys.modules or (mp is not None and mp.parent_process() is not None)
    if child and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def keras_module() -> Any:
    """``keras``, imported without the backend's native start-up lines (see the module doc)."""
    if "keras" in sys.modules:
        return sys.modules["keras"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with contextlib.nullcontext() if verbose() else _quiet_fd2():
        import keras  # the backend (TensorFlow) loads here

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.constant(0.0)  # device start-up logs its own lines
    return keras
