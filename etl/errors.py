"""One place decides what is a user-facing failure and what may be retried."""

from __future__ import annotations


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
