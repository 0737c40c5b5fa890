"""The DVC stages of the MNIST pipeline: fetch, split, augment, train, evaluate."""
