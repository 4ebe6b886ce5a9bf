"""Times as the tool writes and reads them: UTC ISO-8601 text, in the two forms the records use.

- seconds (`2024-05-27T06:11:47Z`): when a manifest was committed, a lease taken, a load run started;
- milliseconds (`2024-05-27T06:11:47.109Z`): export and catch-up window times, the form AWS writes in an
  export's manifest (`exportTime`, `exportFromTime`), so a time read from one is written back unchanged.
Manifests and tests compare these texts, so each form is made in this one place.
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo


def iso_seconds(t: float | datetime | None = None) -> str:
    """Whole seconds in UTC with a `Z` (`t`: epoch seconds or an aware datetime; None: now)."""
    when = datetime.now(UTC) if t is None else t if isinstance(t, datetime) else datetime.fromtimestamp(t, UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_ms(t: datetime) -> str:
    """Milliseconds (truncated) in UTC with a `Z`."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def parse(text: str, assume: tzinfo | None = UTC) -> datetime:
    """ISO-8601 text, `Z` or an offset; a time without one is in `assume` (None: left naive, for a caller
    that refuses it with its own message). ValueError when it is not ISO-8601."""
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t if t.tzinfo is not None or assume is None else t.replace(tzinfo=assume)
