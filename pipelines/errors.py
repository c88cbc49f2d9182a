"""tierwise's own small set of exceptions; vendor errors are translated into these
in one place each (I/O in ``pipelines.io``, the engine in ``ray_cluster.engine``),
keeping the original as ``__cause__``."""


class TierwiseError(Exception):
    """Base class of every error tierwise raises on purpose."""


class InputError(TierwiseError):
    """The input data set is unusable as a whole (missing column, duplicate ids,
    unreadable path). Raised before any generation starts."""


class StorageError(TierwiseError):
    """Reading or writing a location failed (permissions, missing bucket, ...)."""


class EngineError(TierwiseError):
    """The inference engine failed to start or serve a request."""
