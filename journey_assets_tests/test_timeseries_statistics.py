"""Time-series and statistics transforms on small handmade data, against hand/pandas values."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from journey_assets.transforms import statistics, timeseries
from journey_assets_tests.test_features import _record, spark_events

# views: 2 on 10-01, none on 10-02 (a gap that must count as 0), 4 on 10-03, 1 on 10-04.
EVENTS = (
    [_record("2019-10-01 10:00:00", "view", 1, "a", 5.0)] * 1
    + [_record("2019-10-01 11:30:00", "view", 2, "b", 150.0)]
    + [_record(f"2019-10-03 1{i}:00:00", "view", 3, "c", 30.0 + i) for i in range(4)]
    + [_record("2019-10-03 13:05:00", "purchase", 3, "c", 33.0)]
    + [_record("2019-10-04 23:00:00", "view", 1, "d", 500.0)]
)


def test_daily_trends_fill_gaps_and_match_pandas(spark):
    events = spark_events(spark, EVENTS)
    daily = timeseries.daily_event_counts(events, date(2019, 10, 1), date(2019, 10, 4))
    rows = {(r.date.isoformat(), r.event_type): r
            for r in timeseries.with_trends(daily).collect()}
    assert len(rows) == 4 * 4  # every day x every event type, zeros included
    views = pd.Series([2, 0, 4, 1], dtype=float)
    for i, day in enumerate(["2019-10-01", "2019-10-02", "2019-10-03", "2019-10-04"]):
        r = rows[(day, "view")]
        assert r.event_count == views[i]
        assert r.ma_3d == pytest.approx(views.rolling(3, min_periods=1).mean()[i])
        assert r.ma_7d == pytest.approx(views.rolling(7, min_periods=1).mean()[i])
    assert rows[("2019-10-01", "view")].dod_growth is None     # no previous day
    assert rows[("2019-10-02", "view")].dod_growth == -1.0
    assert rows[("2019-10-03", "view")].dod_growth is None     # growth from zero: undefined
    assert rows[("2019-10-04", "view")].dod_growth == pytest.approx(-0.75)

    hourly = {r.hour: r for r in timeseries.hourly_event_pivot(events).collect()}
    assert hourly[10].view == 2 and hourly[13].view == 1 and hourly[13].purchase == 1
    assert hourly[23].view == 1 and hourly[11].cart == 0


def test_statistics_match_numpy(spark):
    events = spark_events(spark, EVENTS)
    percentiles = {p["category_l1"]: p for p in statistics.price_percentiles(events)}
    prices = [5.0, 150.0, 30.0, 31.0, 32.0, 33.0, 33.0, 500.0]
    assert percentiles["electronics"]["events"] == len(prices)
    assert percentiles["electronics"]["p50"] == 32.0  # nearest rank of the 8 prices
    assert percentiles["electronics"]["mean"] == pytest.approx(np.mean(prices))

    chi = statistics.chi_square_price_tier_vs_purchase(events)
    assert chi["contingency"] == {"Budget": {"events": 1, "purchases": 0},
                                  "Mid-Range": {"events": 5, "purchases": 1},
                                  "Premium": {"events": 2, "purchases": 0}}
    assert chi["degrees_of_freedom"] == 2
    observed = np.array([[1, 0], [4, 1], [2, 0]])
    expected = observed.sum(1, keepdims=True) * observed.sum(0, keepdims=True) / observed.sum()
    assert chi["statistic"] == pytest.approx(((observed - expected) ** 2 / expected).sum())

    frame = spark.createDataFrame(pd.DataFrame({"x": [1.0, 2.0, 2.0, 3.0, 9.0],
                                                "y": [2.0, 4.1, 3.9, 6.0, 18.5]}))
    corr = statistics.correlation_matrix(frame, ["x", "y"])
    assert corr[0][1] == pytest.approx(np.corrcoef([1, 2, 2, 3, 9], [2, 4.1, 3.9, 6, 18.5])[0, 1])
    shape = statistics.distribution_shape(frame, ["x"])["x"]
    x = np.array([1.0, 2.0, 2.0, 3.0, 9.0])
    m2, m3, m4 = (((x - x.mean()) ** p).mean() for p in (2, 3, 4))
    assert shape["skewness"] == pytest.approx(m3 / m2 ** 1.5)
    assert shape["kurtosis"] == pytest.approx(m4 / m2 ** 2 - 3)
    assert shape["median"] == 2.0 and shape["count"] == 5
