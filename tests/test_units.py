"""The pure modules on their own, no database, no server: the wire protocol, a viewing
session's arithmetic, request parsing, answer shapes, basic auth, the rollup deltas, the
duration histogram, the storable-JSON checks and the WHERE builder."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import math

import orjson
import pytest

from app.auth.basic import BasicAuth, parse_header
from app.errors import BadRequest, Unauthorized
from app.ingest import protocol
from app.ingest.agents import Device
from app.ingest.sessions import InvalidInput, Limits, ViewingSession, parse_join, strip_url
from app.model import quantiles, rollup, scores
from app.model.query import Selection, Window
from app.model.results import PlaysBucket, Summary
from app.model.rows import Ended, IntervalRow, Presence, SessionRow
from app.model.storable import UnsafeValue, check_json
from app.model.vocabulary import Breakdown
from app.query import params, shapes
from app.storage.where import Params, where

NOW = dt.datetime(2026, 11, 2, 12, 0, tzinfo=dt.UTC)
LIMITS = Limits(metadata_bytes=4096, metadata_depth=4)


# -- wire protocol --------------------------------------------------------------------------
def test_frames_of_both_serializers_parse_and_replies_encode() -> None:
    v2 = protocol.parse('["1", "2", "video:1", "event", {"name": "play"}]', protocol.V2)
    assert (v2.join_ref, v2.ref, v2.topic, v2.event, v2.payload) == (
        "1",
        "2",
        "video:1",
        "event",
        {"name": "play"},
    )
    v1 = protocol.parse(b'{"topic": "video:1", "event": "phx_join", "ref": 7}', protocol.V1)
    assert (v1.ref, v1.payload) == ("7", {})
    ok = orjson.loads(protocol.reply(protocol.V2, "1", "2", "video:1"))
    assert ok == ["1", "2", "video:1", "phx_reply", {"status": "ok", "response": {}}]
    refused = orjson.loads(protocol.reply(protocol.V1, None, "3", "t", "no"))
    assert refused["payload"] == {"status": "error", "response": {"reason": "no"}}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("not json", "not JSON"),
        ('["1", "2", "t"]', "expected [join_ref"),
        ('[null, "2", "", "event", {}]', "topic must be"),
        ('[null, "2", "t", "event", [1]]', "payload must be an object"),
        ('[null, "2", "t", "event", {"a": "\\u0000"}]', "NUL"),
        ('[null, "2", "t", "e", ' + '{"a": ' * 40 + "1" + "}" * 40 + "]", "nested deeper"),
    ],
)
def test_bad_frames_name_the_problem_and_keep_the_ref(raw: str, reason: str) -> None:
    with pytest.raises(protocol.FrameError) as caught:
        protocol.parse(raw, protocol.V2)
    assert reason in caught.value.reason
    if raw.startswith("[null"):
        assert caught.value.ref == "2"  # the reply can still name the push


# -- a viewing session ------------------------------------------------------------------------
def test_page_urls_keep_scheme_host_and_path_only() -> None:
    assert strip_url("https://u:p@Example.com:443/a;jsessionid=1/b?q=1#f") == (
        "https://example.com/a/b"
    )
    assert strip_url("http://example.com:8080") == "http://example.com:8080/"
    assert strip_url("javascript:alert(1)") is None
    assert strip_url(42) is None


def test_joins_are_checked() -> None:
    info = parse_join({"identifier": {"video_id": "v"}}, "key", "https://s.example/p?x", LIMITS)
    assert (info.key, info.page, info.video.identifier) == ("key", "https://s.example/p", None)
    with pytest.raises(InvalidInput, match="missing key and metadata or identifier"):
        parse_join({}, None, None, LIMITS)
    with pytest.raises(InvalidInput, match="NUL"):
        parse_join({"key": "k\x00", "metadata": {}}, None, None, LIMITS)
    with pytest.raises(InvalidInput, match="larger than"):
        parse_join({"key": "k", "metadata": {"t": "x" * 5000}}, None, None, LIMITS)


def test_a_session_counts_what_was_played() -> None:
    join = parse_join({"key": "k", "metadata": {"video_id": "v"}}, None, None, LIMITS)
    session = ViewingSession(join, Device("chrome", "mac", "desktop", False))
    assert session.handle({"name": "loadedmetadata", "duration": 60}, NOW) == []  # kept
    assert session.needs_id({"name": "play"})
    ops = session.handle({"name": "play", "from": 0}, NOW, new_id=9)
    assert any(isinstance(op, Presence) and op.playing for op in ops)
    ops = session.handle({"name": "pause", "to": 10}, NOW + dt.timedelta(seconds=10))
    (interval,) = [op for op in ops if isinstance(op, IntervalRow)]
    assert (interval.media_from, interval.media_to) == (0.0, 10.0)
    row = [op for op in ops if isinstance(op, SessionRow)][-1]
    assert (row.id, row.duration, row.played, row.watch_seconds) == (9, 60, True, 10.0)
    ops = session.handle({"name": "exit"}, NOW + dt.timedelta(seconds=11))
    assert any(isinstance(op, Ended) for op in ops)
    with pytest.raises(InvalidInput, match="unknown event name"):
        session.handle({"name": "explode"}, NOW)


def test_upscaling_is_weighted_by_the_seconds_shown_while_playing() -> None:
    join = parse_join({"key": "k", "metadata": {"video_id": "v"}}, None, None, LIMITS)
    session = ViewingSession(join, Device("chrome", "mac", "desktop", False))

    def at(seconds: float) -> dt.datetime:
        return NOW + dt.timedelta(seconds=seconds)

    def send(seconds: float, name: str, **fields: float) -> list[object]:
        return session.handle({"name": name, **fields}, at(seconds), new_id=5)

    # 1280×720 in a 1280×720 box before the request: no upscale, nothing counted yet
    send(0, "rendition", width=1280, height=720, dw=1280, dh=720)
    send(0, "play_request")
    send(0.5, "first_frame", ms=500)
    send(0.5, "play", **{"from": 0})
    # 4 s at 1280×720, then 640×360 (2×) for 2 s, paused 10 s (not counted), 2 s more
    send(4.5, "rendition", width=640, height=360, dw=1280, dh=720)
    send(6.5, "pause", to=6)
    send(16.5, "play", **{"from": 6})
    send(18.5, "pause", to=8)
    # a box of unknown size: not counted until a known one
    send(18.5, "rendition", width=640, height=360)
    send(19, "play", **{"from": 8})
    ops = send(21, "exit", to=10)
    q = [op for op in ops if isinstance(op, SessionRow)][-1].qoe
    assert q is not None
    assert (q.upscale_max, q.upscale_sum, q.upscale_seconds) == (1.0, 4.0, 8.0)
    assert not q.quick_exit
    view = scores.of_view(q, 10.0, True)
    assert view.quality == pytest.approx(100 * math.exp(-0.33 * (0.15 * 1.0 + 0.85 * 0.5)))
    assert view.startup == pytest.approx(800 / 8.5) and view.smooth == 100.0

    # an exit before start within 1 s scores nothing; after 1 s, 50
    for wait, success in ((0.9, None), (1.1, 50.0)):
        left = ViewingSession(join, Device("chrome", "mac", "desktop", False))
        left.handle({"name": "play_request"}, NOW, new_id=6)
        ops = left.handle({"name": "exit"}, at(wait))
        q = [op for op in ops if isinstance(op, SessionRow)][-1].qoe
        assert q is not None and q.exited_before_start
        assert scores.of_view(q, 0.0, False).success == success
    assert scores.upscale_of(1920, 1080, 1280, 720) == 0.0  # shown smaller: no upscale
    assert scores.upscale_of(640, 480, 1920, 1080) == 1080 / 480 - 1  # letterboxed: height


# -- request parsing and answer shapes --------------------------------------------------------
def test_bucket_questions_are_parsed_and_cut_to_retention() -> None:
    body = {
        "query": {"key": "k"},
        "timeframe": "30 days",
        "interval": "1 day",
        "minimum_watch_seconds": "2.5",
    }
    q = params.bucket_query(body, NOW, max_buckets=100, retention_days=7)
    assert q.window == Window(NOW - dt.timedelta(days=7), NOW)
    assert (q.selection.key, q.minimum_watch_seconds, q.interval.seconds) == ("k", 2.5, 86400)
    with pytest.raises(BadRequest, match="up to 32 buckets, the limit is 10"):
        params.bucket_query(body, NOW, max_buckets=10)
    with pytest.raises(BadRequest, match="minimum_watch_seconds must be a number"):
        params.bucket_query({**body, "minimum_watch_seconds": "nan"}, NOW, 100)
    with pytest.raises(BadRequest, match="timeframe.from must be a unix timestamp"):
        params.bucket_query({**body, "timeframe": {"from": True, "to": 5}}, NOW, 100)
    assert params.parse_breakdown("device") is Breakdown.DEVICE
    with pytest.raises(BadRequest, match="breakdown must be one of"):
        params.parse_breakdown("shoe")


def test_answers_are_shaped() -> None:
    bucket = PlaysBucket(dt.datetime(2026, 11, 2, 1), views=2, watch_seconds=3.14159)
    bucket.count("firefox", "linux", "desktop", 1)
    bucket.count("netscape", "beos", "fridge", 1)  # unknown classes count as other
    bucket.impressions = 4
    (out,) = shapes.plays([bucket])["views"]
    assert out["interval"] == "2026-11-02T01:00:00.000000"
    assert (out["total_view_time"], out["play_rate"]) == (3.142, 0.5)
    assert out["browser"]["firefox"] == out["browser"]["other"] == 1
    assert out["device_type"]["desktop"] == out["device_type"]["other"] == 1
    assert list(out["platform"]) == list(Breakdown.PLATFORM.classes)
    summary = Summary(1, NOW, None, None, {}, "chrome", "mac", "desktop", None, None, 0, 0, [])
    page = shapes.sessions_page([summary, summary], limit=1)
    assert len(page["sessions"]) == 1
    assert page["next"] == params.make_cursor(NOW, 1)
    engaged = shapes.engagement(10.0, 2, {0: 3}, sessions=4)["engagement"]
    assert [(e["viewers"], e["share"]) for e in engaged] == [(3, 0.75), (0, 0.0)]


# -- basic auth ---------------------------------------------------------------------------------
def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_basic_credentials_are_parsed_and_checked() -> None:
    assert parse_header(_basic("admin", "a:b")) == ("admin", "a:b")
    for bad in (None, "Bearer x", "Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode()):
        with pytest.raises(Unauthorized):
            parse_header(bad)
    auth = BasicAuth("admin", "secret", None)
    asyncio.run(auth.check(_basic("admin", "secret")))
    with pytest.raises(Unauthorized, match="wrong user or password"):
        asyncio.run(auth.check(_basic("admin", "guess")))


# -- the model ----------------------------------------------------------------------------------
def _state(watch: float, islands: tuple[float, ...]) -> rollup.State:
    return rollup.State("k", 1, NOW, "chrome", "mac", "desktop", "/", watch, 60.0, islands)


def test_deltas_of_a_session_that_grows_add_up_to_its_last_state() -> None:
    grown = rollup.Deltas()
    first, second = _state(2.0, (0.0, 2.0)), _state(12.0, (0.0, 12.0))
    grown.change(None, first)
    grown.change(first, second)
    direct = rollup.Deltas()
    direct.add(second, +1)
    bucket = NOW.timestamp() - NOW.timestamp() % rollup.GRAIN_SECONDS
    for table in ("plays", "key_plays", "sources", "completion"):
        if table.endswith("plays"):  # `changes` counts writes: two here, one there
            for v in (*getattr(grown, table).values(), *getattr(direct, table).values()):
                v[-1] = 0
        net = {k: v for k, v in getattr(grown, table).items() if any(v)}
        want = {k: v for k, v in getattr(direct, table).items() if any(v)}
        assert net == want, table
    counts = grown.engagement[(1, bucket, 10, 60.0)]
    assert counts == direct.engagement[(1, bucket, 10, 60.0)] == [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert rollup.watch_class(12.0) == 5 and rollup.threshold_class(10) == 5
    assert rollup.threshold_class(2.5) is None
    assert rollup.merge_islands([0.0, 5.0], [(4.0, 8.0), (9.0, 9.0), (20.0, 30.0)]) == [
        0.0,
        8.0,
        20.0,
        30.0,
    ]


def test_quantiles_are_within_their_error() -> None:
    samples = [float(ms) for ms in range(100, 5000, 7)]
    counts = quantiles.histogram(samples)
    for q in (0.5, 0.95):
        exact = sorted(samples)[int(q * len(samples) + 0.999999) - 1]
        found = quantiles.quantile(counts, q)
        assert found is not None
        assert abs(found - exact) <= quantiles.RELATIVE_ERROR * exact + 0.1
    assert quantiles.quantile({}, 0.5) is None


def test_storable_json_refuses_nul_and_deep_nesting() -> None:
    check_json("x", {"a": [1, {"b": "ok"}]})
    with pytest.raises(UnsafeValue, match="NUL"):
        check_json("x", {"a\x00": 1})
    with pytest.raises(UnsafeValue, match="deeper than 3"):
        check_json("x", [[[[1]]]], max_depth=3)


def test_where_builder_binds_every_value() -> None:
    p = Params()
    sel = Selection(video={"v": 1}, session={"s": 2}, key="k", identifier="i")
    sql = where(p.sessions(sel, Window(NOW, NOW + dt.timedelta(hours=1))))
    assert p.values == ["k", {"v": 1}, "i", NOW, NOW + dt.timedelta(hours=1), {"s": 2}]
    assert "$6::jsonb" in sql and "'k'" not in sql
    assert where([]) == "TRUE"
    windows = [Window(NOW, NOW), Window(NOW, NOW)]
    assert Params().within("s.at", windows).count(" OR ") == 1
