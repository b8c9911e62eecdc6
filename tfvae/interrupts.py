"""Ctrl-C that cannot be lost: a KeyboardInterrupt that TensorFlow's finalizers swallow is raised again.

Python raises KeyboardInterrupt wherever the main thread happens to be when SIGINT arrives. If
that is a finalizer (a `__del__` or weakref callback: TensorFlow runs many when a `tf.data`
iterator or a traced function is collected, at every epoch's end), Python prints "Exception
ignored in ..." and carries on, so training goes on as if Ctrl-C had never been pressed; raised
inside a TensorFlow callback into Python it can also come out as another error. `guard` keeps
the interrupt: within it, SIGINT still raises KeyboardInterrupt at once and is also remembered;
`RaisePendingInterrupt` (a Keras callback) raises it again at the next batch's end if it was
lost, and `guard` turns whatever ends its body after a Ctrl-C (another error, or nothing) into
KeyboardInterrupt.

Example:

    with interrupts.guard():
        model.fit(data, callbacks=[interrupts.RaisePendingInterrupt()])
"""

from __future__ import annotations

import contextlib
import signal
import threading

import keras

_pending = threading.Event()
_installed = threading.Event()


def interrupt_pending() -> bool:
    """True once Ctrl-C was pressed within the outermost active `guard`."""
    return _pending.is_set()


def raise_pending_interrupt() -> None:
    """Raises KeyboardInterrupt if Ctrl-C was pressed within `guard` (even if it was swallowed)."""
    if _pending.is_set():
        raise KeyboardInterrupt


def _remembering_handler(signum, frame):
    _pending.set()
    raise KeyboardInterrupt


@contextlib.contextmanager
def guard():
    """Within: Ctrl-C raises KeyboardInterrupt as usual, and cannot be lost.

    It takes effect only in the main thread while SIGINT has Python's default handler (not, for
    example, in a notebook, whose kernel handles SIGINT itself, or when SIGINT is ignored); a
    nested `guard` leaves the work to the outermost one.

    Raises:
        KeyboardInterrupt: when Ctrl-C was pressed within, whether the body ended with
            KeyboardInterrupt, another exception (chained as its context) or none.
    """
    usable = (threading.current_thread() is threading.main_thread()
              and signal.getsignal(signal.SIGINT) is signal.default_int_handler
              and not _installed.is_set())
    if not usable:
        yield
        return
    _pending.clear()
    _installed.set()
    signal.signal(signal.SIGINT, _remembering_handler)
    try:
        yield
    except KeyboardInterrupt:
        raise
    except BaseException as error:
        if _pending.is_set():
            raise KeyboardInterrupt from error
        raise
    else:
        raise_pending_interrupt()
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _installed.clear()
        _pending.clear()


class RaisePendingInterrupt(keras.callbacks.Callback):
    """Raises KeyboardInterrupt at the end of a batch or epoch after a Ctrl-C within `guard`.

    Without `guard` it does nothing. A Ctrl-C that was not lost has already stopped `fit`; this
    callback stops it within a batch when a finalizer swallowed the KeyboardInterrupt.
    """

    def on_train_batch_end(self, batch, logs=None):
        raise_pending_interrupt()

    def on_test_batch_end(self, batch, logs=None):
        raise_pending_interrupt()

    def on_predict_batch_end(self, batch, logs=None):
        raise_pending_interrupt()

    def on_epoch_end(self, epoch, logs=None):
        raise_pending_interrupt()
