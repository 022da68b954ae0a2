"""The per-view scores of app/model/scores.py in SQL, over a sessions row `s`: the raw QoE
path and the rollup rebuild use these, so both compute what ingest computes (float8, the
same operations in the same order)."""

from __future__ import annotations

from app.model.scores import SCORES

_STARTED = "(s.played OR s.startup_ms IS NOT NULL)"
_STALLED = "coalesce(s.rebuffer_seconds, 0::float8)"
_HALF = "(coalesce(s.rebuffer_count, 0) / 2.0::float8)"

# name -> the score of one view (NULL where it does not apply), experience aside
_DIRECT = {
    "success": f"""CASE WHEN s.failure IS NOT NULL THEN 0::float8
                        WHEN {_STARTED} THEN 100::float8
                        WHEN s.exited_before_start AND NOT coalesce(s.quick_exit, false)
                        THEN 50::float8 END""",
    "startup": "800.0::float8 / (8.0::float8 + s.startup_ms / 1000.0::float8)",
    "smooth": f"""CASE WHEN {_STARTED} AND NOT coalesce(s.failed_before_start, false) THEN
                    (100.0::float8 / sqrt(1.0::float8 + {_HALF} * {_HALF})
                     + 100.0::float8 * exp(-10.0::float8 * CASE
                         WHEN s.watch_seconds + {_STALLED} > 0
                         THEN {_STALLED} / (s.watch_seconds + {_STALLED})
                         ELSE 0::float8 END)) / 2.0::float8 END""",
    "quality": """CASE WHEN s.upscale_max IS NOT NULL AND s.upscale_seconds > 0 THEN
                    100.0::float8 * exp(-0.33::float8 * (0.15::float8 * s.upscale_max
                                        + 0.85::float8 * (s.upscale_sum / s.upscale_seconds)))
                    END""",
}
_PARTS = ("startup", "smooth", "quality")
_COUNT = " + ".join(f"(sc.{p} IS NOT NULL)::int" for p in _PARTS)
_TOTAL = " + ".join(f"coalesce(sc.{p}, 0::float8)" for p in _PARTS)
_EXPERIENCE = f"""CASE WHEN sc.success IS NOT NULL THEN
                    CASE WHEN {_COUNT} > 0
                         THEN sc.success * (({_TOTAL}) / ({_COUNT})) / 100.0::float8
                         ELSE sc.success END END"""

# joined after `FROM sessions s`: sc.success … sc.quality, and sce.experience
LATERAL = (
    "CROSS JOIN LATERAL (SELECT "
    + ", ".join(f"{sql} AS {name}" for name, sql in _DIRECT.items())
    + f") AS sc CROSS JOIN LATERAL (SELECT {_EXPERIENCE} AS experience) AS sce"
)

_SOURCE = {name: f"sc.{name}" for name in _DIRECT} | {"experience": "sce.experience"}
assert tuple(_SOURCE) == SCORES
# the scores as columns of a row that selected them (ROW_COLUMNS … AS name)
ROW_COLUMNS = ", ".join(f"{sql} AS {name}" for name, sql in _SOURCE.items())


def sums(alias: str | None = None) -> dict[str, str]:
    """The rollups' score columns (QOE_COLUMNS order: views then score, per score) as
    aggregates: over LATERAL's columns, or over `alias`.<score> columns."""
    out = {}
    for name in SCORES:
        value = _SOURCE[name] if alias is None else f"{alias}.{name}"
        out[f"{name}_views"] = f"count({value})"
        out[f"{name}_score"] = f"coalesce(sum({value}), 0::float8)"
    return out
