"""One training run of the throughput benchmark in a fresh process; prints its figures as JSON."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    # python -m benchmarks.worker {reference,project} SPLIT_DIR EPOCHS; params.yaml's batch size.
    implementation, split_dir, epochs = sys.argv[1:]
    batch_size = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]["batch_size"]
    if implementation == "project":
        # Before TensorFlow loads, as in the train stage: mnist_cnn sets TensorFlow's environment.
        from mnist_cnn import training
        from mnist_cnn.params import TrainConfig
    else:
        from benchmarks.reference import reference_fit
    import keras
    from tensorflow.python.util import _pywrap_util_port

    # Resident memory before any data or model: TensorFlow's and Keras's own, in MiB.
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    after_import = {
        key: int(status[key].split()[0]) / 1024 for key in ("VmRSS", "RssAnon", "RssFile")
    }
    seconds: list[float] = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            seconds.append(time.perf_counter() - self.start)

    load = lambda kind: np.load(Path(split_dir, f"train_{kind}.npy"), mmap_mode="r")  # noqa: E731
    train = load("images"), load("labels")
    options = {"callbacks": [EpochTimer()], "verbose": 0}
    if implementation == "project":
        config = TrainConfig.load(ROOT / "params.yaml").replace(epochs=int(epochs))
        training.run(config, regularized=False, train=train, validation=None, **options)
    else:
        reference_fit(*train, epochs=int(epochs), batch_size=batch_size, **options)
    timed = seconds[1:] or seconds
    figures = {
        "images_per_second": len(train[0]) * len(timed) / sum(timed),
        "onednn_variable": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        # Whether TensorFlow runs oneDNN's kernels: the variable and the CPU decide it.
        "onednn_enabled": bool(_pywrap_util_port.IsMklEnabled()),
        "rss_after_import_mib": after_import,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
