"""Exceptions a user can cause; each message names what is wrong so it can be fixed."""


class EdgeError(Exception):
    """Base class for errors caused by input: files, config, models, payloads."""


class ImageError(EdgeError):
    """An image could not be read or decoded."""


class ModelError(EdgeError):
    """A model file or its metadata is missing, malformed, or computes wrong results."""


class GalleryError(EdgeError):
    """The gallery database is unreadable, foreign, or an operation on it is invalid."""


class ConfigError(EdgeError):
    """A configuration value is missing, of the wrong type, or impossible."""


class NoFaceError(EdgeError):
    """An image that had to contain a face contains none (or too small, too blurry)."""
