"""Keras callbacks of the training loop: a clean stop on Ctrl-C, the learning rate in the logs."""

from __future__ import annotations

import signal
from typing import Any

import keras


class StopOnInterrupt(keras.callbacks.Callback):
    """Turns the first Ctrl-C into a stop at the next batch boundary; a second one aborts.

    A KeyboardInterrupt raised inside TensorFlow's runtime or a tf.data thread can crash the
    process or be lost, so the handler only sets a flag that Keras checks between calls into
    TensorFlow. One call runs `train.steps_per_execution` batches, so the stop comes within
    that many batches.
    """

    def __init__(self) -> None:
        super().__init__()
        self.interrupted = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        self.interrupted = True
        print("\nInterrupted: stopping after this step (Ctrl-C again to abort).", flush=True)
        signal.signal(signal.SIGINT, self._previous)

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._previous = signal.signal(signal.SIGINT, self._handle)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.interrupted:
            self.model.stop_training = True

    def on_test_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.interrupted:
            self.model.stop_evaluating = True

    def on_train_end(self, logs: dict | None = None) -> None:
        if not self.interrupted:
            signal.signal(signal.SIGINT, self._previous)


class LogLearningRate(keras.callbacks.Callback):
    """Adds the optimizer's learning rate at the end of each epoch to the epoch's logs.

    Callbacks after it (dvclive, the history) see it, so the schedule is plotted with the curves.
    """

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["learning_rate"] = float(self.model.optimizer.learning_rate)
