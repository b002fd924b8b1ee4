"""Shop weeks and dates in LGSR's convention.

LGSR's first shop week is 200607 and a shop week runs Sunday to Saturday (SHOP_WEEKDAY 1 = Sunday .. 7 =
Saturday). Shop-week codes are YYYYWW with 52 weeks a year, so 200652 is followed by 200701.
"""
from __future__ import annotations

import datetime as dt

FIRST_SHOP_WEEK = 200607
FIRST_WEEK_START = dt.date(2006, 4, 9)  # the Sunday that opens shop week 200607
WEEKS_PER_YEAR = 52


def shop_week_code(week_index: int) -> int:
    """YYYYWW of the 0-based week ``week_index`` (0 -> 200607)."""
    first_year, first_week = divmod(FIRST_SHOP_WEEK, 100)
    year_offset, week_in_year = divmod(first_week - 1 + week_index, WEEKS_PER_YEAR)
    return (first_year + year_offset) * 100 + week_in_year + 1


def week_start(week_index: int) -> dt.date:
    """The Sunday that opens the 0-based week ``week_index``."""
    return FIRST_WEEK_START + dt.timedelta(days=7 * week_index)


def shop_dates(week_index: int) -> list[int]:
    """YYYYMMDD of weekdays 1..7 (Sunday..Saturday) of the week, indexed by ``weekday - 1``."""
    start = week_start(week_index)
    days = [start + dt.timedelta(days=offset) for offset in range(7)]
    return [day.year * 10000 + day.month * 100 + day.day for day in days]


def week_of_year(week_index: int) -> float:
    """Position of the week in the calendar year, in weeks (0 = 1 January); drives seasonality."""
    start = week_start(week_index)
    return (start.timetuple().tm_yday - 1 + 3.5) / 7.0
