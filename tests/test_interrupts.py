"""tfvae.interrupts: a Ctrl-C that a finalizer swallows still stops training."""

import gc
import signal
import sys

import keras
import numpy as np
import pytest

from tfvae import interrupts


@pytest.fixture
def default_sigint(monkeypatch):
    """SIGINT with Python's default handler (a test worker may have inherited another); yields
    the exceptions that Python dropped ("Exception ignored in ...")."""
    dropped = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: dropped.append(unraisable.exc_type))
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield dropped
    signal.signal(signal.SIGINT, previous)


class _SwallowsCtrlC:
    """Presses Ctrl-C from its finalizer, where Python prints the KeyboardInterrupt and drops it
    (as it does for TensorFlow's finalizers, when SIGINT arrives as one of them runs)."""

    def __del__(self):
        signal.raise_signal(signal.SIGINT)
        for _ in range(1000):  # the handler runs here, inside the finalizer
            pass


class _CtrlCInAFinalizerAtBatch(keras.callbacks.Callback):
    def __init__(self, batch):
        super().__init__()
        self.batch, self.batches_seen = batch, 0

    def on_train_batch_begin(self, batch, logs=None):
        self.batches_seen += 1
        if self.batches_seen == self.batch:
            _SwallowsCtrlC()  # collected at once
            gc.collect()


def _fit(callbacks, epochs=3):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x = np.zeros((64, 4), np.float32)
    return model.fit(x, x[:, :1], batch_size=8, epochs=epochs, verbose=0, callbacks=callbacks)


def test_without_the_guard_a_swallowed_ctrl_c_is_lost(default_sigint):
    presser = _CtrlCInAFinalizerAtBatch(3)
    history = _fit([presser])
    assert len(history.epoch) == 3 and presser.batches_seen == 24  # fit never noticed
    assert default_sigint == [KeyboardInterrupt]  # Python dropped it


def test_a_swallowed_ctrl_c_stops_fit_at_the_batch_end(default_sigint):
    presser = _CtrlCInAFinalizerAtBatch(3)
    with pytest.raises(KeyboardInterrupt), interrupts.guard():
        _fit([interrupts.RaisePendingInterrupt(), presser])
    assert presser.batches_seen == 3 and default_sigint == [KeyboardInterrupt]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert not interrupts.interrupt_pending()


def test_another_error_after_a_swallowed_ctrl_c_becomes_keyboard_interrupt(default_sigint):
    with pytest.raises(KeyboardInterrupt) as raised, interrupts.guard():
        _SwallowsCtrlC()
        gc.collect()
        assert interrupts.interrupt_pending()
        raise RuntimeError("what TensorFlow made of it")
    assert isinstance(raised.value.__cause__, RuntimeError)


def test_a_body_that_ends_after_a_swallowed_ctrl_c_raises_keyboard_interrupt(default_sigint):
    with pytest.raises(KeyboardInterrupt), interrupts.guard():
        _SwallowsCtrlC()
        gc.collect()


def test_without_ctrl_c_the_guard_changes_nothing(default_sigint):
    with interrupts.guard():
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler  # installed
        with interrupts.guard():  # nested: the outer one keeps the work
            pass
        assert not interrupts.interrupt_pending()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(ValueError, match="kept"), interrupts.guard():
        raise ValueError("kept")
    history = _fit([interrupts.RaisePendingInterrupt()], epochs=2)  # and the callback is inert
    assert len(history.epoch) == 2


def test_the_guard_leaves_another_sigint_handler_alone():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # e.g. a background job
    try:
        with interrupts.guard():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
