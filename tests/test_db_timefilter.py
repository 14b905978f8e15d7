"""The one parser of --since / --until (export, stats, audit, the analysts' frames)."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pandas as pd
import pytest

from db.errors import LogError
from db.timefilter import parse_time

UTC = timezone.utc


@pytest.mark.parametrize("value, expected", [
    (None, None),
    ("2025-03-01", datetime(2025, 3, 1, tzinfo=UTC)),
    (" 2025-03-01T12:30 ", datetime(2025, 3, 1, 12, 30, tzinfo=UTC)),
    ("2025-03-01 12:30:00", datetime(2025, 3, 1, 12, 30, tzinfo=UTC)),
    ("2025-03-01T12:30+02:00", datetime(2025, 3, 1, 10, 30, tzinfo=UTC)),
    ("2025-03-01T12:30Z", datetime(2025, 3, 1, 12, 30, tzinfo=UTC)),
    (date(2025, 3, 1), datetime(2025, 3, 1, tzinfo=UTC)),
    (datetime(2025, 3, 1, 8), datetime(2025, 3, 1, 8, tzinfo=UTC)),
    (datetime(2025, 3, 1, 8, tzinfo=timezone(timedelta(hours=-5))), datetime(2025, 3, 1, 13, tzinfo=UTC)),
    (pd.Timestamp("2025-03-01 08:00"), datetime(2025, 3, 1, 8, tzinfo=UTC)),
    (pd.Timestamp("2025-03-01 08:00", tz="Europe/Paris"), datetime(2025, 3, 1, 7, tzinfo=UTC)),
])
def test_forms_become_aware_utc_datetimes(value, expected):
    got = parse_time(value)
    assert got == expected
    if got is not None:
        assert type(got) is datetime and got.tzinfo == UTC


@pytest.mark.parametrize("value", ["yesterday", "24h", "", "2025-13-01", 20250301])
def test_anything_else_is_one_line_that_names_the_flag(value):
    with pytest.raises(LogError, match=r"^--until .* is not a date; write it as YYYY-MM-DD") as e:
        parse_time(value, "--until")
    assert "\n" not in str(e.value)


def test_every_consumer_reads_bounds_through_it():
    """The export, the frames, the stats filter and the audit share the parser (and its error)."""
    from db import audit, stats

    frame = pd.DataFrame({"run_id": [1, 1], "judge": ["j", None], "annotator": [None, "ann"],
                          "created_at": pd.to_datetime(["2025-03-01 10:00", "2025-03-02 10:00"], utc=True)})
    assert len(stats.filter_votes(frame, since="2025-03-02")) == 1
    assert len(stats.filter_votes(frame, until=date(2025, 3, 2))) == 1
    with pytest.raises(LogError, match="--since 'garbage' is not a date"):
        stats.filter_votes(frame, since="garbage")
    with pytest.raises(LogError, match="--until 'soon' is not a date"):
        audit.load_votes(None, audit.AuditFilters(until="soon"), everything=frame)
