"""The one parser of the log's time filters (`--since`, `--until`, the Audit page's dates): export,
`dreamdpo stats`, the audit and the analysts' frames all read their bounds through `parse_time`."""
from __future__ import annotations

from datetime import date, datetime, time, timezone
from typing import overload

from db.errors import LogError


@overload
def parse_time(value: None, flag: str = ...) -> None: ...
@overload
def parse_time(value: str | date | datetime, flag: str = ...) -> datetime: ...
def parse_time(value: str | date | datetime | None, flag: str = "--since") -> datetime | None:
    """An aware UTC datetime from an ISO date or date-time string ('2025-03-01', '2025-03-01T12:30',
    '2025-03-01 12:30+02:00'), a date (its midnight) or a datetime (pandas Timestamps included); None
    stays None. Naive values are taken as UTC, the log's clock. Anything else is a LogError that names
    `flag` and the accepted forms."""
    if value is None:
        return None
    when: datetime
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.strip())
        except ValueError:
            raise LogError(f"{flag} {value!r} is not a date; write it as YYYY-MM-DD or YYYY-MM-DDTHH:MM") from None
    elif isinstance(value, datetime):
        when = value
    elif isinstance(value, date):
        when = datetime.combine(value, time())
    else:
        raise LogError(f"{flag} {value!r} is not a date; write it as YYYY-MM-DD or YYYY-MM-DDTHH:MM")
    if hasattr(when, "to_pydatetime"):  # a pandas Timestamp: a plain datetime for SQL and comparisons
        when = when.to_pydatetime()
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)
