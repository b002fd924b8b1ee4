"""The ``--map canonical=SOURCE,...`` flag: which source column holds each canonical column."""
from __future__ import annotations

from retailsim.data.schema import COLUMNS_BY_NAME, SOURCE_TIME_COLUMNS
from retailsim.errors import RetailSimInputError

# Canonical columns plus the time columns a generic source may offer instead of ``week`` (see generic.py).
MAPPABLE_NAMES = tuple(COLUMNS_BY_NAME) + SOURCE_TIME_COLUMNS


def parse_mapping(text: str | None, names: tuple[str, ...] = MAPPABLE_NAMES, flag: str = "--map") -> dict[str, str]:
    """``"basket_id=ORDER_ID, customer_id=USER_ID"`` -> ``{"basket_id": "ORDER_ID", "customer_id": "USER_ID"}``;
    ``names`` are the names that may be mapped, ``flag`` the option errors name."""
    mapping: dict[str, str] = {}
    if text is None or not text.strip():
        return mapping
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        canonical, equals, source = (part.strip() for part in item.partition("="))
        if not equals or not canonical or not source:
            raise RetailSimInputError(f"{flag}: expected canonical=SOURCE pairs separated by commas, got {item!r}.")
        if canonical not in names:
            raise RetailSimInputError(
                f"{flag}: {canonical!r} is not a canonical column (expected one of {', '.join(names)}).")
        if canonical in mapping:
            raise RetailSimInputError(f"{flag}: {canonical!r} is mapped twice.")
        mapping[canonical] = source
    return mapping
