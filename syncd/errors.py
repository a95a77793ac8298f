"""Exception types. Each subclasses the builtin that fits and names the ids involved."""

from __future__ import annotations


class SyncdError(Exception):
    """Base class for every error syncd raises on purpose."""


class ConfigError(SyncdError, ValueError):
    """A config file, key or secret is wrong. The CLI turns it into exit code 2."""

    def __init__(self, source: str, key: str | None, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {problem}")


class StoreError(SyncdError, RuntimeError):
    """The SQLite store cannot do what was asked (schema too new, file unusable)."""


class ColumnLimitError(StoreError):
    """New fields would take a mirror table past SQLite's column limit."""

    def __init__(self, resource: str, needed: int, limit: int) -> None:
        self.resource = resource
        super().__init__(
            f"{resource}: storing this record needs {needed} columns, more than SQLite's limit of {limit}"
        )


class StoreClosedError(StoreError):
    """Work was handed to the store writer after it stopped."""

    def __init__(self) -> None:
        super().__init__("the store writer is stopped and takes no more work")


class RecordError(SyncdError, ValueError):
    """An API record or webhook payload does not follow the contract."""

    def __init__(self, reason: str, *, resource: str | None = None) -> None:
        self.reason = reason
        self.resource = resource
        super().__init__(f"{resource}: {reason}" if resource else reason)


class ApiError(SyncdError, RuntimeError):
    """The Pet Store API answered with an error or did not answer."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        self.status = status
        self.code = code
        super().__init__(message)


class ApiAuthError(ApiError, PermissionError):
    """401 or 403: retrying will not help until the key is fixed."""


class ApiNotFoundError(ApiError, LookupError):
    """404: the record or resource does not exist."""


class CursorExpiredError(ApiError):
    """400 cursor_expired: the listing must start again from its `since`."""


class ApiTlsError(ApiError):
    """The API's TLS certificate failed verification: retrying cannot fix a certificate."""


class ApiResponseTooLargeError(ApiError):
    """An answer larger than `api.max_response`, refused while it streamed in."""

    def __init__(self, what: str, limit: int, *, declared: int | None = None) -> None:
        self.limit = limit
        size = f"declares {declared} bytes" if declared is not None else f"is larger than {limit} bytes"
        super().__init__(
            f"{what}: response {size}, over api.max_response ({limit} bytes); "
            "lower poll.page_size or raise api.max_response"
        )


class RateLimitedError(ApiError):
    """429 with the number of seconds the API asked us to wait (None: it gave no usable
    Retry-After, so the client backs off)."""

    def __init__(self, message: str, *, retry_after: float | None) -> None:
        self.retry_after = retry_after
        super().__init__(message, status=429, code="rate_limited")


class ApiTransientError(ApiError):
    """5xx, timeout or connection failure: worth retrying with backoff."""


class ListingLoopError(ApiError):
    """A listing that does not end: the API repeated a next_cursor or went past poll.max_pages.
    The pages before it are committed; the next poll starts a new listing."""

    def __init__(self, message: str, *, resource: str, reason: str) -> None:
        self.resource = resource
        self.reason = reason
        super().__init__(message)
