"""Area per class as a user reads it (ha and share of the mapped area), for the dialog and log."""

from __future__ import annotations


def area_summary(class_area_m2: dict[str, float]) -> list[tuple[str, float, float]]:
    """(class, hectares, percent of the classified area) per class, largest first."""
    total = sum(class_area_m2.values())
    rows = [
        (name, area / 10_000, 100.0 * area / total if total else 0.0)
        for name, area in class_area_m2.items()
    ]
    return sorted(rows, key=lambda row: -row[1])
