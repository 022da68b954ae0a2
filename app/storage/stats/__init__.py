"""SQL for the query API, one module per family of questions over one WHERE builder
(app/storage/where.py): plays (views, page loads, top videos, watching now), sources,
completion, qoe, engagement; common.py holds bucketing and the rollup plan. Statements are
assembled from constant fragments chosen by which filters are present; every value
arrives as a `$n` parameter. What they return is in app/model/results.py."""

from app.storage.stats.common import bucket_rollup_plan, qoe_plan
from app.storage.stats.completion import completion
from app.storage.stats.engagement import engagement, engagement_of
from app.storage.stats.plays import plays, videos, watching
from app.storage.stats.qoe import qoe
from app.storage.stats.sources import sources

__all__ = [
    "bucket_rollup_plan",
    "completion",
    "engagement",
    "engagement_of",
    "plays",
    "qoe",
    "qoe_plan",
    "sources",
    "videos",
    "watching",
]
