"""Prometheus counters and a histogram for what happens on every frame, kept as plain
numbers and read at scrape time: a prometheus_client Counter takes a lock on every
increment, which the ingest path would pay once or more per event. One event loop
updates these; a scrape runs on the same loop, so no lock is needed.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator

from prometheus_client.core import REGISTRY, CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector


class Tally(Collector):
    """A counter with one label, its values fixed up front (never from client text)."""

    def __init__(self, name: str, documentation: str, label: str, values: Iterable[str]) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self.counts = dict.fromkeys(values, 0)
        REGISTRY.register(self)

    def add(self, value: str, n: int = 1) -> None:
        self.counts[value] += n

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=[self.label])
        for value, count in self.counts.items():
            family.add_metric([value], count)
        yield family


class Spread(Collector):
    """A histogram (cumulative buckets, sum, count) of observed seconds."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last: above every bound
        self.total = 0.0
        REGISTRY.register(self)

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def collect(self) -> Iterator[HistogramMetricFamily]:
        cumulative, running = [], 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            cumulative.append((bound, running))
        yield HistogramMetricFamily(
            self.name, self.documentation, buckets=cumulative, sum_value=self.total
        )
