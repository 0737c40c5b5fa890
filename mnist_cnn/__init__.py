"""The library behind the stages: params, files, model, input pipeline, training and serving."""

from mnist_cnn import runtime

# TensorFlow reads its process-wide settings once, when it loads, and every module of this
# package that uses it is imported after this line.
runtime.prepare_tensorflow()
