"""Face-recognition access control for edge devices."""

__version__ = "0.1.0"
