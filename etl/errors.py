"""One place decides what is a user-facing failure and what may be retried.

`EtlError` and its subclasses are failures a user can act on (one line and a hint, no traceback).
Whether a failure may succeed when tried again is decided here, once: by the DynamoDB error code
(`classify`) for a request, and by the exception (`transient`) for a task.
"""

from __future__ import annotations

THROTTLE_CODES = frozenset({"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded",
                            "TransactionInProgressException", "SlowDown"})
RETRY_CODES = frozenset({"InternalServerError", "ServiceUnavailable", "InternalFailure", "RequestTimeout",
                         "InternalError", "RequestTimeTooSkewed"})


class EtlError(Exception):
    """A failure the user can act on: printed as one line (plus a hint), no traceback unless --debug."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  -> {self.hint}"


class ConfigError(EtlError):
    """A configuration value is missing or invalid."""


class StageNotReady(EtlError):
    """The previous stage has not committed its manifest for a month."""


class ValidationFailed(EtlError):
    """Staged data did not pass a check (checksums, counts)."""


class TransientError(EtlError):
    """A failure that may pass when the same task runs again (the network, throttling, a 5xx)."""


class Stopped(EtlError):
    """A task stopped before finishing because another task of its month failed (or the run was cancelled).

    Never the cause of a failure: the error that caused the stop is the one reported."""


class Interrupted(EtlError):
    """The run was interrupted (SIGINT, SIGTERM): its tasks stopped at once, keeping what was acknowledged
    (exit code 130)."""


class PartlyDone(EtlError):
    """Some months finished and others failed (exit code 3)."""


class DeadlineReached(EtlError):
    """The load's deadline passed; finished parts are checkpointed."""


def classify(status: int, code: str) -> str:
    """A service reply -> ok | throttle | retry | fatal: throttling and 5xx retry; other 4xx (validation,
    access) fail."""
    if code in THROTTLE_CODES:
        return "throttle"
    if status >= 500 or code in RETRY_CODES:
        return "retry"
    if status == 200:
        return "ok"
    return "fatal"


def transient(exc: BaseException) -> bool:
    """May the task that raised `exc` succeed when run again? Connection failures and botocore errors whose
    code `classify` retries; our own `TransientError`. Everything else (bad data, config, access) is final."""
    import botocore.exceptions

    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, EtlError):
        return False
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return classify(status, str(err.get("Code", ""))) in ("throttle", "retry")
    # a dropped or timed-out connection, also halfway through an answer's body (an endpoint that refuses
    # connections is a mistake, not a blip)
    return isinstance(exc, botocore.exceptions.ConnectionClosedError | botocore.exceptions.ReadTimeoutError
                      | botocore.exceptions.ResponseStreamingError | botocore.exceptions.IncompleteReadError
                      | ConnectionResetError | TimeoutError)
