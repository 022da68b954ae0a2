"""Encoders for exports of session summaries: NDJSON, CSV and Parquet, batch by batch, so
an export of any size is written in constant memory. Used by `/api/v1/export`, the
`vidmetrics export` command and the webhook sink."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from typing import IO, Any, cast

import orjson

from app.model.results import SCORE_NAMES, SUMMARY_COLUMNS, Summary, qoe_dict

MEDIA_TYPES = {
    "ndjson": "application/x-ndjson",
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
}
COLUMNS = SUMMARY_COLUMNS


# A text cell that begins with one of these is a formula to a spreadsheet (OWASP, "CSV
# Injection"): it is written with a leading apostrophe, which spreadsheets show as text.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """One CSV cell: None is empty, numbers stay numbers, text never runs as a formula."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


class FormatUnavailable(Exception):
    """The format needs an optional package that is not installed."""


class _Ndjson:
    def head(self) -> bytes:
        return b""

    def rows(self, batch: list[Summary]) -> bytes:
        return b"".join(orjson.dumps(s.to_dict()) + b"\n" for s in batch)

    def tail(self) -> bytes:
        return b""


class _Csv:
    def __init__(self) -> None:
        self._buffer = io.StringIO()
        # RFC 4180 line ends: csv quotes a field holding any character of the line
        # terminator, so with CRLF every field holding a CR or an LF is quoted
        self._writer = csv.writer(self._buffer, lineterminator="\r\n")

    def _take(self) -> bytes:
        text = self._buffer.getvalue()
        self._buffer.seek(0)
        self._buffer.truncate()
        return text.encode()

    def head(self) -> bytes:
        self._writer.writerow(COLUMNS)
        return self._take()

    def rows(self, batch: list[Summary]) -> bytes:
        for s in batch:
            d = s.to_dict()
            d["metadata"] = orjson.dumps(d["metadata"]).decode()
            d["watched"] = orjson.dumps(d["watched"]).decode()
            d["qoe"] = orjson.dumps(d["qoe"]).decode() if d["qoe"] is not None else None
            self._writer.writerow(csv_cell(d[c]) for c in COLUMNS)
        return self._take()

    def tail(self) -> bytes:
        return b""


class _Sink(io.RawIOBase):
    """A write-only file whose bytes are taken out after each row group."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self.chunks)
        self.chunks.clear()
        return out


class _Parquet:
    def __init__(self) -> None:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise FormatUnavailable(
                "parquet export needs the optional pyarrow package "
                "(pip install 'vidmetrics[parquet]')"
            ) from None
        self._pa, self._pq = pa, pq
        span = pa.struct([("from", pa.float64()), ("to", pa.float64())])
        stamp = pa.timestamp("us", tz="UTC")
        fields: list[tuple[str, Any]] = [
            ("session", pa.int64()),
            ("started_at", stamp),
            ("ended_at", stamp),
            ("identifier", pa.string()),
            ("metadata", pa.string()),
            ("browser", pa.string()),
            ("platform", pa.string()),
            ("device", pa.string()),
            ("page", pa.string()),
            ("duration", pa.float64()),
            ("watch_seconds", pa.float64()),
            ("furthest", pa.float64()),
            ("watched", pa.list_(span)),
            ("played", pa.bool_()),
            (
                "qoe",
                pa.struct(
                    [
                        ("startup_ms", pa.float64()),
                        ("rebuffer_count", pa.int32()),
                        ("rebuffer_seconds", pa.float64()),
                        ("seek_count", pa.int32()),
                        ("seek_latency_ms", pa.float64()),
                        ("failure", pa.int16()),
                        ("failed_before_start", pa.bool_()),
                        ("exited_before_start", pa.bool_()),
                        ("upscale_max_percentage", pa.float64()),
                        ("upscale_mean_percentage", pa.float64()),
                        (
                            "scores",
                            pa.struct([(n, pa.float64()) for n in SCORE_NAMES.values()]),
                        ),
                    ]
                ),
            ),
        ]
        self._schema = pa.schema(fields)
        self._sink = _Sink()
        # a file-like sink (write, flush, close) that hands over what was written
        self._writer = pq.ParquetWriter(
            cast("IO[Any]", self._sink), self._schema, compression="zstd"
        )

    def head(self) -> bytes:
        return self._sink.take()

    def rows(self, batch: list[Summary]) -> bytes:
        columns: dict[str, list[Any]] = {name: [] for name in COLUMNS}
        for s in batch:
            columns["session"].append(s.session)
            columns["started_at"].append(s.started_at)
            columns["ended_at"].append(s.ended_at)
            columns["identifier"].append(s.identifier)
            columns["metadata"].append(orjson.dumps(s.metadata).decode())
            columns["browser"].append(s.browser)
            columns["platform"].append(s.platform)
            columns["device"].append(s.device)
            columns["page"].append(s.page)
            columns["duration"].append(s.duration)
            columns["watch_seconds"].append(s.watch_seconds)
            columns["furthest"].append(s.furthest)
            columns["watched"].append([{"from": a, "to": b} for a, b in s.watched])
            columns["played"].append(s.played)
            columns["qoe"].append(qoe_dict(s.qoe, s.watch_seconds, s.played))
        self._writer.write_table(self._pa.table(columns, schema=self._schema))
        return self._sink.take()

    def tail(self) -> bytes:
        self._writer.close()
        return self._sink.take()


def encoder(fmt: str) -> _Ndjson | _Csv | _Parquet:
    if fmt == "ndjson":
        return _Ndjson()
    if fmt == "csv":
        return _Csv()
    return _Parquet()


async def encode(fmt: str, batches: AsyncIterator[list[Summary]]) -> AsyncIterator[bytes]:
    """The bytes of an export, chunk by chunk."""
    enc = encoder(fmt)
    head = enc.head()
    if head:
        yield head
    async for batch in batches:
        chunk = enc.rows(batch)
        if chunk:
            yield chunk
    tail = enc.tail()
    if tail:
        yield tail
