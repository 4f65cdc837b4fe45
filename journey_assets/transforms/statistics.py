"""Statistical summaries: price percentiles, feature correlations, chi-square, shape."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from pyspark.ml.feature import StringIndexer, VectorAssembler
from pyspark.ml.stat import ChiSquareTest, Correlation
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from journey_assets.schema import CATEGORY_L1, EVENT_TYPE, PRICE, PRICE_TIER

DEFAULT_PERCENTILES: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


def _float(value: Any) -> float | None:
    """A JSON/BSON-safe float: None for null or non-finite values."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def price_percentiles(events: DataFrame, percentiles: Sequence[float] = DEFAULT_PERCENTILES,
                      accuracy: int = 10_000) -> list[dict[str, Any]]:
    """Per category_l1: event count, mean and approximate price percentiles (percentile_approx)."""
    rows = (
        events.groupBy(CATEGORY_L1)
        .agg(
            F.count(F.lit(1)).alias("events"),
            F.avg(PRICE).alias("mean"),
            F.percentile_approx(PRICE, list(percentiles), accuracy).alias("q"),
        )
        .orderBy(CATEGORY_L1)
        .collect()
    )
    out = []
    for row in rows:
        doc: dict[str, Any] = {CATEGORY_L1: row[CATEGORY_L1], "events": int(row["events"]),
                               "mean": _float(row["mean"])}
        for p, value in zip(percentiles, row["q"], strict=True):
            doc[f"p{round(p * 100):02d}"] = _float(value)
        out.append(doc)
    return out


def correlation_matrix(frame: DataFrame, columns: Sequence[str],
                       method: str = "pearson") -> list[list[float | None]]:
    """Correlation matrix of numeric ``columns`` (pyspark.ml.stat.Correlation), row-major.

    A constant column has an undefined correlation: reported as None.
    """
    vectors = VectorAssembler(inputCols=list(columns), outputCol="_v", handleInvalid="skip")
    matrix = Correlation.corr(vectors.transform(frame.select(*columns)), "_v", method).head()[0]
    values = matrix.toArray()
    return [[_float(values[i][j]) for j in range(len(columns))] for i in range(len(columns))]


def chi_square_price_tier_vs_purchase(events: DataFrame) -> dict[str, Any]:
    """Pearson chi-square independence test of price_tier against "is a purchase event".

    Spark's ChiSquareTest treats the feature vector's values as categories: the tier is
    indexed by StringIndexer into a one-element vector; the label is 1.0 for purchases.
    """
    labelled = events.select(
        F.col(PRICE_TIER), (F.col(EVENT_TYPE) == F.lit("purchase")).cast("double").alias("label")
    )
    indexed = StringIndexer(inputCol=PRICE_TIER, outputCol="_tier",
                            stringOrderType="alphabetAsc").fit(labelled).transform(labelled)
    vectors = VectorAssembler(inputCols=["_tier"], outputCol="_v").transform(indexed)
    result = ChiSquareTest.test(vectors, "_v", "label").head()
    contingency = {
        row[PRICE_TIER]: {"events": int(row["events"]), "purchases": int(row["purchases"])}
        for row in labelled.groupBy(PRICE_TIER).agg(
            F.count(F.lit(1)).alias("events"), F.sum("label").cast("long").alias("purchases")
        ).collect()
    }
    return {
        "statistic": _float(result.statistics[0]),
        "p_value": _float(result.pValues[0]),
        "degrees_of_freedom": int(result.degreesOfFreedom[0]),
        "contingency": contingency,
    }


def distribution_shape(frame: DataFrame, columns: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per column: count, mean, stddev, min, median (approx), max, skewness, excess kurtosis."""
    aggs = []
    for c in columns:
        aggs += [
            F.count(c).alias(f"{c}__count"), F.avg(c).alias(f"{c}__mean"),
            F.stddev(c).alias(f"{c}__stddev"), F.min(c).alias(f"{c}__min"),
            F.percentile_approx(c, 0.5, 10_000).alias(f"{c}__median"),
            F.max(c).alias(f"{c}__max"),
            F.skewness(c).alias(f"{c}__skewness"), F.kurtosis(c).alias(f"{c}__kurtosis"),
        ]
    row = frame.agg(*aggs).first().asDict()
    stats = ("count", "mean", "stddev", "min", "median", "max", "skewness", "kurtosis")
    return {
        c: {s: (int(row[f"{c}__{s}"]) if s == "count" else _float(row[f"{c}__{s}"]))
            for s in stats}
        for c in columns
    }
