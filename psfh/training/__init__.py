"""Training of fold adapters: data and augmentation, loss, embedding cache, the fold loop."""
