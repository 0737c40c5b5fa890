"""Serving: a byte-reproducible SavedModel of probabilities, and MNIST-style digits from photos."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy.special import softmax

from mnist_cnn.digits import CANVAS
from mnist_cnn.io import StageError

if TYPE_CHECKING:  # TensorFlow loads only when a model is exported or loaded.
    import keras

SIGNATURE = "serving_default"
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
# Traced functions and some captured inputs are numbered by one process-wide counter, so the
# same model exported after other work gets other numbers: here in saved_model.pb's text form.
_COUNTED_NAMES = re.compile(
    r'("__inference_\w*?_|key: "_user_specified_name"\s+value \{\s+s: ")(\d+)"'
)


def export_model(model: keras.Model, path: str | Path) -> None:
    """Write `model` as a SavedModel: `serving_default` maps uint8 `images` (None, 28, 28) to
    softmax `probabilities` (None, 10). The same weights give the same bytes.

    It is written into a temporary directory beside `path`, checked against the Keras model,
    then renamed onto `path`: a failure leaves no directory that looks complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A writer killed by SIGKILL cannot clean up: remove what an earlier one left.
    for stale in path.parent.glob(f".{path.name}.*"):
        shutil.rmtree(stale, ignore_errors=True)
    temporary = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        _write_archive(model, temporary)
        canonicalize(temporary)
        _check_export(model, temporary)
        # mkdtemp creates the directory as 0700; give it the permissions mkdir would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o777 & ~umask)
        if path.exists():
            shutil.rmtree(path)
        os.replace(temporary, path)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _write_archive(model: keras.Model, directory: Path) -> None:
    import keras
    import tensorflow as tf

    def probabilities(images: tf.Tensor) -> dict[str, tf.Tensor]:
        logits = model(images, training=False)
        return {OUTPUT_NAME: tf.nn.softmax(tf.cast(logits, "float32"), axis=-1)}

    # model.export would serve the logits; this endpoint is the only signature and returns
    # probabilities under a name. The model is not `track`ed: in Keras 3 that saves every
    # weight a second time, under its Keras wrapper.
    archive = keras.export.ExportArchive()
    endpoint = archive.add_endpoint(
        SIGNATURE,
        probabilities,
        input_signature=[tf.TensorSpec((None, CANVAS, CANVAS), tf.uint8, name=INPUT_NAME)],
    )
    # The traced function lists its variables in a set keyed by memory address, and the
    # checkpoint stores them in that order: the model's own order keeps the bytes the same.
    traced = endpoint.get_concrete_function()
    position = {id(variable.value): index for index, variable in enumerate(model.variables)}
    traced.set_variables(sorted(traced.variables, key=lambda v: (position.get(id(v), -1), v.name)))
    archive.write_out(str(directory), verbose=False)


def canonicalize(directory: Path) -> None:
    """Make an export's bytes depend on the model alone, not on the process or the save.

    saved_model.pb: the counted names (see `_COUNTED_NAMES`) are renumbered by rank and the
    function library, in hash-map order, is sorted by name. fingerprint.pb: TensorFlow puts a
    random `uuid` in it (CreateRandomUUID, tensorflow/cc/saved_model/fingerprinting.cc); it is
    recomputed for the new saved_model.pb, its uuid derived from its content hashes instead.
    """
    from google.protobuf import text_format
    from tensorflow.core.protobuf import fingerprint_pb2, saved_model_pb2
    from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting

    graph_path = directory / "saved_model.pb"
    saved_model = saved_model_pb2.SavedModel.FromString(graph_path.read_bytes())
    text = text_format.MessageToString(saved_model)
    # The rewrite goes through the text form, so it must be lossless for this graph.
    if text_format.Parse(text, saved_model_pb2.SavedModel()) != saved_model:
        raise StageError(f"{graph_path}: its text form does not round-trip; cannot renumber it")
    numbers = sorted({int(match[2]) for match in _COUNTED_NAMES.finditer(text)})
    rank = {number: str(index) for index, number in enumerate(numbers)}
    text = _COUNTED_NAMES.sub(lambda match: f'{match[1]}{rank[int(match[2])]}"', text)
    saved_model = text_format.Parse(text, saved_model_pb2.SavedModel())
    for meta_graph in saved_model.meta_graphs:
        meta_graph.graph_def.library.function.sort(key=lambda function: function.signature.name)
    graph_path.write_bytes(saved_model.SerializeToString(deterministic=True))

    fingerprint = fingerprint_pb2.FingerprintDef.FromString(
        fingerprinting.CreateFingerprintDef(str(directory))
    )
    fingerprint.uuid = ""
    digest = hashlib.sha256(fingerprint.SerializeToString(deterministic=True)).digest()
    fingerprint.uuid = str(int.from_bytes(digest[:16], "big"))
    (directory / "fingerprint.pb").write_bytes(fingerprint.SerializeToString(deterministic=True))
    # An empty assets/ is not a file: DVC would not restore it, so the export has none.
    with contextlib.suppress(OSError):
        (directory / "assets").rmdir()


def _check_export(model: keras.Model, directory: Path) -> None:
    """Refuse an export whose probabilities differ from softmax(the Keras model's logits)."""
    probe = np.random.default_rng(0).integers(0, 256, (8, CANVAS, CANVAS), dtype=np.uint8)
    # Mostly dark images with a few bright pixels keep the probabilities away from 0 and 1.
    probe[np.random.default_rng(1).random(probe.shape) < 0.9] = 0
    expected = softmax(model.predict_on_batch(probe).astype(np.float64), axis=1)
    got = load_classifier(directory)(probe)
    if not np.allclose(got, expected, rtol=1e-4, atol=1e-6):
        worst = float(np.abs(got - expected).max())
        raise StageError(f"{directory}: export differs from the Keras model by {worst:.2g}")


def check_model_path(path: Path) -> None:
    """Raise StageError naming `path` unless it looks like a .keras file or a SavedModel.
    It reads no more than a zip directory, so it runs before TensorFlow loads."""
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise StageError(f"{path}: not a SavedModel directory (no saved_model.pb in it)")
    elif not path.exists():
        raise StageError(f"{path}: no such model file or directory")
    elif not zipfile.is_zipfile(path):
        raise StageError(f"{path}: not a model (neither a .keras zip archive nor a SavedModel)")
    else:
        with zipfile.ZipFile(path) as archive:
            if "config.json" not in archive.namelist():
                raise StageError(f"{path}: a zip archive but not a Keras model (no config.json)")


def load_classifier(path: str | Path) -> Callable[[np.ndarray], np.ndarray]:
    """A function from uint8 images (n, 28, 28) to probabilities (n, 10), loaded from a
    .keras file or from a SavedModel export."""
    path = Path(path)
    check_model_path(path)
    if not path.is_dir():
        from mnist_cnn.model import load_model

        model = load_model(path)
        return lambda images: softmax(model.predict(images, verbose=0).astype("float64"), axis=1)
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as error:  # TensorFlow raises many types for a broken SavedModel.
        raise StageError(f"{path}: not a loadable SavedModel ({type(error).__name__})") from None
    signature = loaded.signatures.get(SIGNATURE)
    if signature is None or OUTPUT_NAME not in signature.structured_outputs:
        raise StageError(f"{path}: no {SIGNATURE} signature from {INPUT_NAME} to {OUTPUT_NAME}")

    def classify(images: np.ndarray) -> np.ndarray:
        # `loaded` owns the variables the signature reads, so it must outlive it.
        outputs = loaded.signatures[SIGNATURE](**{INPUT_NAME: tf.constant(images)})
        return outputs[OUTPUT_NAME].numpy().astype("float64")

    return classify
