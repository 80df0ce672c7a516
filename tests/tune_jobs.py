"""Jobs that tests/test_tune.py has the tuner's worker process run instead of
measuring: a candidate that crashes the worker, one that hangs, one whose
result does not match the reference."""

import os
import signal
import time

from convgen.tune import measure


def crash(task):
    os.kill(os.getpid(), signal.SIGSEGV)


def hang(task):
    time.sleep(3600)


def off_by_one(task):
    """The real build and check, against a reference one unit off in a single element."""
    inputs, expected = measure._layer(task.spec, task.seed)
    spoiled = expected.copy()
    spoiled.flat[0] += 1.0
    measure._LAYERS[(repr(task.spec), task.seed)] = (inputs, spoiled)
    try:
        return measure.measure(task)
    finally:
        measure._LAYERS.clear()
