"""Viewer-experience scores, 0–100 per view (Mux's published definitions; docs/api.md):

- playback success: 0 for a failed view, 100 for one that played, 50 for an exit before
  start — none when that exit came within 1 s of the request (a click away, not a wait);
- startup time: 100 · 8 / (8 + startup seconds), for views with a startup time;
- smoothness, for views that started: the mean of 100 / √(1 + (rebuffer count / 2)²) and
  100 · e^(−10 · rebuffer fraction), the fraction being rebuffer seconds / (watch seconds
  + rebuffer seconds);
- video quality, for views whose client reported renditions and the displayed size:
  100 · e^(−0.33 · (0.15 · max upscale + 0.85 · mean upscale)), the upscale as a
  fraction (a rendition shown at 2× its size: 1.0), the mean weighted by the seconds each
  was shown while playing;
- viewer experience (our combination; Mux does not publish its own): playback success ×
  the mean of the other three the view has, / 100; playback success alone when it has
  none of them (a view that never started).

A bucket's score is the mean over the views it applies to: the rollups keep, per score,
the views and the sum of their scores (exact like every other QoE figure). The raw path
computes the same per-view formulas in SQL (app/storage/scores.py),
in float8 and in the same order of operations, so both agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.model.rollup import Qoe

SCORES = ("success", "startup", "smooth", "quality", "experience")

QUICK_EXIT_SECONDS = 1.0  # an exit before start this soon after the request: no score
LOW_QUALITY_UPSCALE = 0.25  # the `low_quality` issue: a rendition shown above 1.25×


@dataclass(frozen=True, slots=True)
class Scores:
    success: float | None = None
    startup: float | None = None
    smooth: float | None = None
    quality: float | None = None
    experience: float | None = None

    def as_tuple(self) -> tuple[float | None, ...]:
        return (self.success, self.startup, self.smooth, self.quality, self.experience)


def of_view(q: Qoe, watch_seconds: float, played: bool) -> Scores:
    """A view's scores (None where a score does not apply)."""
    started = played or q.startup_ms is not None
    if q.failure is not None:
        success: float | None = 0.0
    elif started:
        success = 100.0
    elif q.exited_before_start and not q.quick_exit:
        success = 50.0
    else:  # still waiting for its first frame, or a quick exit
        success = None
    startup = None if q.startup_ms is None else 800.0 / (8.0 + q.startup_ms / 1000.0)
    smooth = None
    if started and not q.failed_before_start:
        stalled = q.rebuffer_seconds
        whole = watch_seconds + stalled
        fraction = stalled / whole if whole > 0 else 0.0
        half = q.rebuffer_count / 2.0
        smooth = (100.0 / math.sqrt(1.0 + half * half) + 100.0 * math.exp(-10.0 * fraction)) / 2.0
    quality = None
    if q.upscale_max is not None and q.upscale_seconds > 0:
        mean = q.upscale_sum / q.upscale_seconds
        quality = 100.0 * math.exp(-0.33 * (0.15 * q.upscale_max + 0.85 * mean))
    experience = None
    if success is not None:
        parts = [x for x in (startup, smooth, quality) if x is not None]
        experience = success * (sum(parts) / len(parts)) / 100.0 if parts else success
    return Scores(success, startup, smooth, quality, experience)


def sums(q: Qoe, watch_seconds: float, played: bool) -> tuple[float, ...]:
    """The view's part of the rollups' score columns: (views, score) per score."""
    out: list[float] = []
    for value in of_view(q, watch_seconds, played).as_tuple():
        out += (0, 0.0) if value is None else (1, value)
    return tuple(out)


def upscale_of(width: float, height: float, shown_width: float, shown_height: float) -> float:
    """How much a width × height rendition is enlarged to fit a shown_width × shown_height
    box (device pixels, contained): 0 when it is not enlarged."""
    return max(0.0, min(shown_width / width, shown_height / height) - 1.0)
