"""TensorFlow's process-wide settings, chosen in one place before TensorFlow loads."""

from __future__ import annotations

import os
import sys

ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
_state = {"prepared": False}


def prepare_tensorflow() -> None:
    """Turn oneDNN's CPU kernels on (unless the user chose) and quieten TensorFlow's C++ log.

    TensorFlow enables oneDNN by default only on CPUs with AVX-512 VNNI/BF16 or AMX; on AVX2
    CPUs it leaves it off, yet it trains this model about twice as fast there (see
    docs/performance.md). TensorFlow reads the variable once, when it loads, so if it is already
    loaded with another setting this says so in one line instead of silently training slower.
    """
    if _state["prepared"]:
        return
    _state["prepared"] = True
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    chosen = os.environ.get(ONEDNN_VARIABLE)
    if "tensorflow" in sys.modules and chosen is None:
        print(
            f"warning: TensorFlow was imported before mnist_cnn, without {ONEDNN_VARIABLE}; "
            "its oneDNN CPU kernels stay at TensorFlow's default (off on AVX2 CPUs), which "
            "trains about half as fast. Import mnist_cnn first, or set "
            f"{ONEDNN_VARIABLE}=1 before starting Python.",
            file=sys.stderr,
            flush=True,
        )
        return
    os.environ.setdefault(ONEDNN_VARIABLE, "1")


def set_threads(threads: int) -> None:
    """Use `threads` CPU threads for TensorFlow's ops (0: TensorFlow's choice, every core).

    It must run before TensorFlow executes its first op, so `training.run` calls it first.
    """
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
