"""The FFN network and its training/inference internals (TensorFlow)."""
