"""cms.histogram: a replica's figures from two /status polls, as tables."""

from __future__ import annotations

import pytest

from cms.histogram import Counters, between, delta, merge, parse, quantile

B = (0.1, 0.5, 1.0, 2.0)


@pytest.mark.parametrize("q, cumulative, want", [
    (0.95, (0, 0, 0, 0, 0), None),                       # nothing answered: no figure
    (0.95, (10, 10, 10, 10, 10), 0.095),                 # all in the first bucket, which starts at 0
    (0.5, (0, 10, 10, 10, 10), 0.3),                     # halfway through (0.1, 0.5]
    (0.95, (0, 0, 100, 100, 100), 0.975),                # 95 of 100 into (0.5, 1.0]
    (0.95, (50, 90, 100, 100, 100), 0.75),               # rank 95 falls halfway into the third bucket
    (0.95, (0, 0, 0, 0, 7), 2.0),                        # all slower than the last bound: "at least 2 s"
    (0.95, (90, 90, 90, 94, 100), 2.0),                  # the quantile is in the unbounded bucket
    (0.9, (90, 90, 90, 94, 100), 0.1),                   # rank 90 is exactly the first bucket's count
    (0.5, (1, 1, 2, 2, 2), 0.1),                         # rank 1 of 2: the first bucket's bound
])
def test_quantile(q, cumulative, want):
    got = quantile(q, B, cumulative)
    assert got == pytest.approx(want) if want is not None else got is None


def c(uptime=10.0, served=0, in_flight=0, in_flight_s=0.0, buckets=(0, 0, 0, 0, 0), sum_s=0.0, bounds=B):
    return Counters(uptime, served, in_flight, in_flight_s, bounds, tuple(buckets), sum_s)


@pytest.mark.parametrize("prev, cur, want", [
    # (seconds, mean in flight, rate, p95, mean latency) or None
    (c(), c(uptime=11.0), (1.0, 0.0, 0.0, None, None)),                                   # idle tick
    (c(served=5, in_flight_s=2.0, buckets=(5, 5, 5, 5, 5), sum_s=0.25),
     c(uptime=12.0, served=25, in_flight_s=8.0, buckets=(5, 5, 25, 25, 25), sum_s=10.25),
     (2.0, 3.0, 10.0, 0.975, 0.5)),                                                       # 20 answers in (0.5, 1.0]
    (c(uptime=10.0, served=9), c(uptime=3.0, served=1), None),                            # restarted: uptime went back
    (c(served=9, buckets=(9, 9, 9, 9, 9)), c(uptime=11, served=9, buckets=(8, 9, 9, 9, 9)), None),   # a count went back
    (c(), c(uptime=10.0), None),                                                          # no time between the polls
    (c(), c(uptime=11.0, bounds=(0.1, 0.5, 1.0, 3.0)), None),                             # the guest's buckets changed
])
def test_between(prev, cur, want):
    got = between(prev, cur)
    if want is None:
        assert got is None
        return
    seconds, in_flight, rate, p95, mean = want
    assert (got.seconds, got.in_flight, got.rate) == pytest.approx((seconds, in_flight, rate))
    assert (got.p95_s is None) == (p95 is None) and (p95 is None or got.p95_s == pytest.approx(p95))
    assert (got.mean_s is None) == (mean is None) and (mean is None or got.mean_s == pytest.approx(mean))


def test_between_p95_of_the_interval_not_of_the_boot():
    # 1000 fast answers before, then 10 slow ones: the interval's p95 is slow, the lifetime's fast.
    prev = c(served=1000, buckets=(1000, 1000, 1000, 1000, 1000))
    cur = c(uptime=11.0, served=1010, buckets=(1000, 1000, 1000, 1010, 1010))
    assert quantile(0.95, B, cur.buckets) < 0.1
    assert between(prev, cur).p95_s == pytest.approx(1.95)
    assert delta(prev, cur) == (0, 0, 0, 10, 10)


def test_merge_adds_replicas():
    assert merge([(1, 2, 3), (0, 5, 5)]) == (1, 7, 8)
    assert merge([]) == ()


GOOD = {"uptime_s": 5.5, "served": 3, "in_flight": 1, "in_flight_s": 0.75,
        "latency": {"bounds_s": [0.1, 1.0], "buckets": [1, 3, 3], "sum_s": 0.9}}


@pytest.mark.parametrize("body, ok", [
    (GOOD, True),
    ({k: v for k, v in GOOD.items() if k != "latency"}, False),          # an older guest
    ({**GOOD, "in_flight_s": "x"}, False),
    ({**GOOD, "latency": {**GOOD["latency"], "buckets": [1, 3]}}, False),            # one bucket short
    ({**GOOD, "latency": {**GOOD["latency"], "buckets": [3, 1, 3]}}, False),         # not cumulative
    ({**GOOD, "latency": {**GOOD["latency"], "bounds_s": [1.0, 0.1]}}, False),       # bounds not ascending
    ({**GOOD, "latency": {**GOOD["latency"], "buckets": [1, True, 3]}}, False),
    ({**GOOD, "uptime_s": float("nan")}, False),
    ([], False),
    (None, False),
])
def test_parse(body, ok):
    got = parse(body)
    assert (got is not None) == ok
    if ok:
        assert got == Counters(5.5, 3, 1, 0.75, (0.1, 1.0), (1, 3, 3), 0.9)
