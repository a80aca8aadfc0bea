"""deepshrink: make trained PyTorch models smaller and faster, for real."""

__version__ = "0.1.0"
