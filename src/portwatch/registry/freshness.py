"""How old the answering registry is, and when that is worth a warning.

IANA assigns ports every month; a snapshot a year old calls newly assigned
ports unassigned. Past a configurable age the CLI says so once, and the
daemon exports the date so an alert can say it too.
"""

from __future__ import annotations

from datetime import date

__all__ = ["DEFAULT_MAX_AGE_DAYS", "age_days", "stale_warning"]

#: Beyond this many days since the registry's ``Last Updated``, warn.
DEFAULT_MAX_AGE_DAYS = 180


def age_days(last_updated: date | None, today: date) -> int | None:
    return None if last_updated is None else (today - last_updated).days


def stale_warning(
    last_updated: date | None, today: date, max_age_days: int, label: str
) -> str | None:
    """One line for standard error, or None when fresh enough (or the check is off: 0)."""
    age = age_days(last_updated, today)
    if max_age_days <= 0 or age is None or age <= max_age_days:
        return None
    return (
        f"the registry answering ({label}, last updated {last_updated}) is {age} days old, "
        f"older than {max_age_days}: run `portwatch registry update` for current assignments"
    )
