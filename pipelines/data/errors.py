"""tierwise's own small set of exceptions; vendor errors are translated into these
in one place each (I/O in ``tierwise.pipelines.data.io``, the engine in ``tierwise.ray_cluster.engine``),
keeping the original as ``__cause__``."""


class TierwiseError(Exception):
    """Base class of every error tierwise raises on purpose."""


class InputError(TierwiseError):
    """The input data set is unusable as a whole (missing column, duplicate ids,
    unreadable path, a corrupt id column). Raised before any generation starts; a
    replica that cannot read a part's pages raises it too, and the part's rows end
    as errors naming the file and row group."""


# Errors of a location that retrying cannot mend: no such bucket or path, access denied
# (s3fs raises these for S3's NoSuchBucket and AccessDenied), as ``tierwise.pipelines.data.io`` classes them.
PERMANENT_STORAGE_ERRORS = (FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError)


class StorageError(TierwiseError):
    """Reading or writing a location failed (permissions, missing bucket, ...)."""

    @property
    def permanent(self) -> bool:
        """Whether retrying cannot help (by the type of the error it was raised from)."""
        return isinstance(self.__cause__, PERMANENT_STORAGE_ERRORS)


class StartInterrupted(TierwiseError):
    """The driver was asked to stop (a signal) while the replicas' engines started: they are
    stopped, nothing ran."""


class EngineError(TierwiseError):
    """The inference engine failed to start or serve a request."""


def unknown_name(kind: str, name: str, valid: list[str] | tuple[str, ...]) -> str:
    """The message for an unknown ``name`` of a registry: the valid names, and the closest one."""
    import difflib

    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {kind} {name!r}{hint}; valid: {', '.join(valid)}"
class EngineDead(EngineError):
    """The engine died (its process was killed, a CUDA error, OOM) and could not be
    restarted in place: the replica is lost and its parts go to another one."""


class JobInterrupted(TierwiseError):
    """SIGINT/SIGTERM stopped the job after draining; re-run the spec to resume."""


class RowErrorsInStrictMode(TierwiseError):
    """``--strict``: some rows ended as errors (their parts are committed)."""
