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

import cv2
import numpy as np
from scipy import ndimage
from scipy.special import softmax

from mnist_cnn.io import StageError

if TYPE_CHECKING:  # TensorFlow loads only when a model is exported or loaded.
    import keras

SIGNATURE = "serving_default"
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
CANVAS = 28
DIGIT_BOX = 20  # MNIST scaled each digit to fit a 20x20 box, aspect ratio kept.
CENTRE = 14.0  # MNIST's centres of mass all lie within half a pixel of (14, 14).
MIN_CONTRAST = 32  # Grey levels between paper and ink below which no digit is seen.
SPECK_SHARE = 0.02  # Blobs under this share of the largest one's ink are small;
DUST_MARGIN = 0.2  # small ones further than this share of the digit's size from it are dust.
# Traced functions and some captured inputs are numbered by one process-wide counter, so the
# same model exported after other work gets other numbers: here in saved_model.pb's text form.
_COUNTED_NAMES = re.compile(
    r'("__inference_\w*?_|key: "_user_specified_name"\s+value \{\s+s: ")(\d+)"'
)


class ImageError(StageError):
    """An input image that cannot be turned into a digit."""


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


def read_grey(path: Path) -> np.ndarray:
    """The image file at `path` as uint8 grey levels, or ImageError naming it."""
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if not path.is_file():
        raise ImageError(f"{path}: not a file")
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise ImageError(f"{path}: empty file")
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageError(f"{path}: not an image OpenCV can read (PNG or JPEG expected)")
    if image.ndim == 3 and image.shape[2] == 4:
        # Transparent pixels show the paper: composite over white, as a viewer shows them.
        scaled = image.astype(np.float64) / np.iinfo(image.dtype).max
        alpha = scaled[..., 3:]
        colour = np.round((scaled[..., :3] * alpha + (1 - alpha)) * 255).astype(np.uint8)
        return cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY)
    # Decoded again as grey: this applies a photo's EXIF orientation and gives 8 bits.
    return cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)


def mnist_digit(grey: np.ndarray, *, name: str = "image") -> np.ndarray:
    """A uint8 28x28 digit made as MNIST was: light on dark, cropped to the ink, scaled to fit
    20x20 with its aspect ratio, placed with its centre of mass at the centre."""
    image = grey.astype(np.float64)
    ring = max(1, min(image.shape) // 20)
    frame = np.ones(image.shape, bool)
    frame[ring:-ring, ring:-ring] = False
    border = image[frame]
    background = float(np.median(border))
    # The border is mostly paper: brighter than mid-grey means dark ink on light paper.
    if background > (image.min() + image.max()) / 2:
        image, border, background = 255 - image, 255 - border, 255 - background
    peak = float(image.max())
    if peak - background < MIN_CONTRAST:
        raise ImageError(f"{name}: no digit found (the image is nearly uniform)")
    # Paper becomes 0 and the strongest ink 1; the paper's grain, measured on the border
    # (median absolute deviation, robust to ink reaching it), is not ink.
    noise = 4 * 1.4826 * float(np.median(np.abs(border - background)))
    ink = np.clip((image - background) / (peak - background), 0, 1)
    ink[image - background <= noise] = 0
    if not ink.any():
        raise ImageError(f"{name}: no digit found (nothing stands out from the paper's grain)")
    ink = _without_dust(ink)
    rows, columns = np.nonzero(ink)
    digit = ink[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1].astype(np.float32)
    height, width = digit.shape
    scale = DIGIT_BOX / max(height, width)
    if scale != 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        # Area averaging anti-aliases when shrinking; enlarging interpolates.
        method = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        digit = np.clip(cv2.resize(digit, size, interpolation=method), 0, 1)
        height, width = digit.shape
    centre_row, centre_column = ndimage.center_of_mass(digit)
    top = int(np.clip(round(CENTRE - centre_row), 0, CANVAS - height))
    left = int(np.clip(round(CENTRE - centre_column), 0, CANVAS - width))
    canvas = np.zeros((CANVAS, CANVAS), np.float32)
    canvas[top : top + height, left : left + width] = digit
    return np.round(canvas * 255).astype(np.uint8)


def _without_dust(ink: np.ndarray) -> np.ndarray:
    """`ink` without specks and small blobs away from the digit, which would widen its bounding
    box. Small blobs near the large ones stay: MNIST's digits have broken strokes too."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats((ink > 0).astype(np.uint8))
    # Label 0 is the paper. Boxes as (first column, first row, end column, end row).
    boxes = np.concatenate([stats[1:, :2], stats[1:, :2] + stats[1:, 2:4]], axis=1)
    blob_ink = ndimage.sum(ink, labels, index=np.arange(1, count))
    large = blob_ink >= SPECK_SHARE * blob_ink.max()
    start, end = boxes[large, :2].min(axis=0), boxes[large, 2:].max(axis=0)
    extent = (end - start).max()
    near = (
        (boxes[:, 2:] >= start - DUST_MARGIN * extent)
        & (boxes[:, :2] <= end + DUST_MARGIN * extent)
    ).all(axis=1)
    # A blob smaller than one pixel of the 20x20 digit is noise wherever it is.
    tiny = stats[1:, 4] < (extent / DIGIT_BOX) ** 2
    return np.where(np.isin(labels, 1 + np.flatnonzero(~large & (tiny | ~near))), 0, ink)


def load_digit(path: Path) -> np.ndarray:
    """The image file at `path` as an MNIST-style 28x28 uint8 digit, or ImageError naming it."""
    return mnist_digit(read_grey(path), name=str(path))
