"""Churn: will a customer who could leave stop being active in the next N days?

Population (who gets a label and a score): users of the lookback window who bought in it, or
were active on at least ``min_active_days`` distinct days in it (``Eligibility``). A one-time
visitor never was a customer, so "leaving" means nothing for them: they are neither labelled
nor scored. Label: ``churned = 1`` when an eligible user has no event (``activity="any"``, the
default) or no purchase (``activity="purchase"``) in (as_of, as_of + horizon].

No leakage by construction: a snapshot's features see only events up to and including its
as_of day (``build_user_features``) and its label only events strictly after it. Training and
evaluation are split in time: the model is trained on an earlier snapshot whose label window
ends where the test snapshot starts, so nothing it learns comes from the test period. Every
snapshot (train, test, score) sees the same full lookback inside the lake, or the plan fails
with the number of days missing (``NotEnoughHistory``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import RandomForestClassifier
from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.ml.feature import VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from journey_assets.schema import EVENT_DATE, EVENT_TYPE, USER_ID
from journey_assets.transforms.features import (
    FEATURE_COLUMNS,
    build_user_features,
    events_in_window,
    to_date,
    window_bounds,
)

LABEL = "churned"
CHURN_PROBABILITY = "churn_probability"
CHURN_PREDICTION = "churn_prediction"
DEFAULT_HORIZON_DAYS = 14
#: Forest size: at 1M events (39k training users) 100 trees of depth 10 took 40 s to fit and
#: 30-40 trees of depth 8 about 10 s, at the same test AUC-ROC (0.855 vs 0.853-0.856).
DEFAULT_NUM_TREES = 40
DEFAULT_MAX_DEPTH = 8
#: Fit on a seeded sample of at most this many users (all of them below it).
DEFAULT_MAX_TRAIN_USERS = 100_000
#: Eligible without a purchase: active on at least this many distinct days of the lookback.
DEFAULT_MIN_ACTIVE_DAYS = 3
#: What counts as staying: any event ("any") or a purchase ("purchase") in the horizon.
ANY_ACTIVITY = "any"
PURCHASE_ACTIVITY = "purchase"
#: Share of the test users, highest churn probability first, for precision at the top decile.
TOP_SHARE = 0.1


@dataclass(frozen=True)
class Eligibility:
    """Who can churn: buyers in the lookback (``buyers``) or users active on at least
    ``min_active_days`` distinct days of it (``min_active_days=None``: buyers only)."""

    buyers: bool = True
    min_active_days: int | None = DEFAULT_MIN_ACTIVE_DAYS
    activity: str = ANY_ACTIVITY

    def __post_init__(self) -> None:
        if self.activity not in (ANY_ACTIVITY, PURCHASE_ACTIVITY):
            raise ValueError(f"churn activity must be {ANY_ACTIVITY!r} or "
                             f"{PURCHASE_ACTIVITY!r}, not {self.activity!r}")
        if not self.buyers and self.min_active_days is None:
            raise ValueError("an empty churn population: enable buyers or min_active_days")

    def condition(self) -> Column:
        """True for the rows of a feature snapshot that belong to the population."""
        parts = []
        if self.buyers:
            parts.append(F.col("purchases") > 0)
        if self.min_active_days is not None:
            parts.append(F.col("active_days") >= F.lit(self.min_active_days))
        cond = parts[0]
        for part in parts[1:]:
            cond = cond | part
        return F.coalesce(cond, F.lit(False))

    def describe(self) -> str:
        who = []
        if self.buyers:
            who.append("bought")
        if self.min_active_days is not None:
            who.append(f"were active on >= {self.min_active_days} days")
        stay = "no event" if self.activity == ANY_ACTIVITY else "no purchase"
        return f"users who {' or '.join(who)} in the lookback; churned = {stay} in the horizon"


DEFAULT_ELIGIBILITY = Eligibility()


class NotEnoughHistory(ValueError):
    """The lake is too short for full-lookback train/test/score snapshots."""

    def __init__(self, message: str, missing_days: int) -> None:
        super().__init__(message)
        self.missing_days = missing_days


@dataclass(frozen=True)
class SnapshotWindow:
    """One snapshot: features over [lookback_start, as_of], label over [label_start, label_end]."""

    role: str
    as_of: date
    lookback_start: date
    label_start: date
    label_end: date

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "as_of": self.as_of.isoformat(),
                "lookback": f"{self.lookback_start} .. {self.as_of}",
                "label": f"{self.label_start} .. {self.label_end}"}


@dataclass(frozen=True)
class SnapshotPlan:
    """Which snapshots train, test and get predictions for a requested as_of."""

    predict_as_of: date
    test_as_of: date
    train_as_of: date
    last_event_date: date
    horizon_days: int
    lookback_days: int = 1
    first_event_date: date | None = None

    @property
    def predict_label_complete(self) -> bool:
        return label_window_complete(self.predict_as_of, self.horizon_days, self.last_event_date)

    def window(self, role: str, as_of: date) -> SnapshotWindow:
        start, _ = window_bounds(as_of, self.lookback_days)
        return SnapshotWindow(role, as_of, start, as_of + timedelta(days=1),
                              as_of + timedelta(days=self.horizon_days))

    @property
    def windows(self) -> list[SnapshotWindow]:
        """Train, test and score windows (the score label window may lie beyond the lake)."""
        return [self.window("train", self.train_as_of), self.window("test", self.test_as_of),
                self.window("score", self.predict_as_of)]

    @property
    def read_span(self) -> tuple[date, date]:
        """The event dates the train and test snapshots read (features and labels)."""
        train, test = self.window("train", self.train_as_of), self.window("test", self.test_as_of)
        return train.lookback_start, test.label_end


def label_window_complete(as_of: date, horizon_days: int, last_event_date: date) -> bool:
    """True when the lake covers all of (as_of, as_of + horizon] (a label is knowable)."""
    return as_of + timedelta(days=horizon_days) <= last_event_date


def plan_snapshots(as_of: str | date, horizon_days: int, first_event_date: date,
                   last_event_date: date, lookback_days: int = 1) -> SnapshotPlan:
    """Test on the latest snapshot <= as_of whose label window is complete, train on the
    snapshot ``horizon_days`` earlier (its label window ends exactly at the test snapshot).

    Every snapshot needs its full ``lookback_days`` of features inside the lake: the earliest,
    the train snapshot, needs events from ``train - lookback + 1``; when the lake starts
    later, ``NotEnoughHistory`` says how many days are missing (the lake needs
    ``lookback + 2 * horizon`` days up to the test snapshot's label end).
    """
    predict = to_date(as_of)
    test = min(predict, last_event_date - timedelta(days=horizon_days))
    train = test - timedelta(days=horizon_days)
    plan = SnapshotPlan(predict, test, train, last_event_date, horizon_days, lookback_days,
                        first_event_date)
    needed_from = plan.window("train", train).lookback_start
    missing = (first_event_date - needed_from).days
    if missing > 0:
        raise NotEnoughHistory(
            f"not enough history for churn at as_of {predict}: {missing} day(s) missing. "
            f"Training on "
            f"{train} with a {lookback_days}-day lookback needs events from {needed_from}; "
            f"the lake spans {first_event_date} .. {last_event_date} "
            f"({(last_event_date - first_event_date).days + 1} days, "
            f"{lookback_days + 2 * horizon_days} needed: lookback + 2 x {horizon_days}-day "
            f"horizon, test label window {test + timedelta(days=1)} .. "
            f"{test + timedelta(days=horizon_days)})", missing)
    return plan


def stayers(events: DataFrame, as_of: str | date, horizon_days: int,
            activity: str = ANY_ACTIVITY) -> DataFrame:
    """user_id of everyone active (any event, or a purchase) in (as_of, as_of + horizon]:
    the users who did not churn. ``events`` may hold duplicates: only distinct users count."""
    start = to_date(as_of) + timedelta(days=1)
    end = to_date(as_of) + timedelta(days=horizon_days)
    window = events_in_window(events, start, end)
    if activity == PURCHASE_ACTIVITY:
        window = window.where(F.col(EVENT_TYPE) == F.lit("purchase"))
    return window.select(USER_ID).distinct().withColumn("_stayed", F.lit(1))


def eligible(features: DataFrame, eligibility: Eligibility = DEFAULT_ELIGIBILITY) -> DataFrame:
    """The rows of a feature snapshot that belong to the churn population."""
    return features.where(eligibility.condition())


def with_churn_label(features: DataFrame, events: DataFrame, as_of: str | date,
                     horizon_days: int,
                     eligibility: Eligibility = DEFAULT_ELIGIBILITY) -> DataFrame:
    """The eligible rows of ``features`` (a snapshot of as_of) with ``churned`` = 1.0 for users
    without activity (``eligibility.activity``) in the following horizon."""
    labels = stayers(events, as_of, horizon_days, eligibility.activity)
    return (
        eligible(features, eligibility).join(labels, USER_ID, "left")
        .withColumn(LABEL, F.when(F.col("_stayed").isNull(), 1.0).otherwise(0.0))
        .drop("_stayed")
    )


def labelled_snapshot(events: DataFrame, as_of: str | date, lookback_days: int,
                      horizon_days: int, eligibility: Eligibility = DEFAULT_ELIGIBILITY,
                      unique: bool = False) -> DataFrame:
    """Features of as_of for the eligible users of its lookback, labelled ``churned``
    (``unique``: ``events`` hold each event once, see ``build_user_features``)."""
    features = build_user_features(events, as_of, lookback_days, unique=unique)
    return with_churn_label(features, events, as_of, horizon_days, eligibility)


def train_test_snapshots(events: DataFrame, plan: SnapshotPlan, lookback_days: int,
                         predict_features: DataFrame | None = None,
                         eligibility: Eligibility = DEFAULT_ELIGIBILITY,
                         unique: bool = False) -> tuple[DataFrame, DataFrame]:
    """The labelled train and test snapshots of ``plan``, cached (the caller unpersists).

    ``events``: the lake over at least ``plan.read_span`` (``read_lake_window``; every read
    below is pruned to its window and ``build_user_features`` drops duplicates itself). When
    the test snapshot is the prediction day (the usual case: as_of's label window is complete),
    its features are ``predict_features`` (the feature-store snapshot, already built) and only
    labels are added: one feature build instead of two.
    """
    horizon = plan.horizon_days
    train = labelled_snapshot(events, plan.train_as_of, lookback_days, horizon, eligibility,
                              unique)
    if predict_features is not None and plan.test_as_of == plan.predict_as_of:
        test = with_churn_label(predict_features, events, plan.test_as_of, horizon, eligibility)
    else:
        test = labelled_snapshot(events, plan.test_as_of, lookback_days, horizon, eligibility,
                                 unique)
    return train.cache(), test.cache()


def fit_churn_model(train: DataFrame, num_trees: int = DEFAULT_NUM_TREES,
                    max_depth: int = DEFAULT_MAX_DEPTH, seed: int = 42,
                    max_train_users: int | None = DEFAULT_MAX_TRAIN_USERS) -> PipelineModel:
    """VectorAssembler + RandomForestClassifier on ``FEATURE_COLUMNS`` -> ``churned``.

    With ``max_train_users`` the forest is fitted on a seeded random sample of about that many
    users (the forest's cost grows with rows x trees x depth; the AUC does not need more).
    """
    fit_on = train
    if max_train_users is not None:
        total = train.count()
        if total > max_train_users:
            fit_on = train.sample(fraction=max_train_users / total, seed=seed)
    assembler = VectorAssembler(inputCols=list(FEATURE_COLUMNS), outputCol="features",
                                handleInvalid="keep")
    forest = RandomForestClassifier(labelCol=LABEL, featuresCol="features", numTrees=num_trees,
                                    maxDepth=max_depth, seed=seed)
    return Pipeline(stages=[assembler, forest]).fit(fit_on)


def score(model: PipelineModel, features: DataFrame, threshold: float = 0.5) -> DataFrame:
    """Input columns plus churn_probability (a plain double: P(churned = 1)) and
    churn_prediction (int, probability >= threshold). Score ``eligible(features)``: users
    outside the population have no churn to predict."""
    scored = model.transform(features)
    probability = vector_to_array(F.col("probability")).getItem(1)
    return scored.select(
        *features.columns,
        probability.alias(CHURN_PROBABILITY),
        (probability >= F.lit(threshold)).cast("int").alias(CHURN_PREDICTION),
    )


def evaluate(model: PipelineModel, test: DataFrame, threshold: float = 0.5) -> dict[str, Any]:
    """Metrics on ``test`` (churn = the positive class) and against its base rate.

    base_rate: the share of churners (what a model that knows nothing reaches as AUC-PR);
    auc_pr_lift = auc_pr / base_rate; precision_top_decile: the churn rate among the 10% of
    users with the highest probability (ties at the cut included), and its lift.
    """
    scored = model.transform(test).select(
        LABEL, "rawPrediction",
        vector_to_array(F.col("probability")).getItem(1).alias("_p")).cache()
    try:
        n, positives = scored.agg(F.count(F.lit(1)), F.sum(F.col(LABEL))).first()
        n, positives = int(n), int(positives or 0)
        if n == 0:
            raise ValueError("the churn test snapshot has no eligible users")
        auc_roc = auc_pr = float("nan")
        if 0 < positives < n:  # both classes present: the curves are defined
            auc_roc = BinaryClassificationEvaluator(
                labelCol=LABEL, rawPredictionCol="rawPrediction", metricName="areaUnderROC"
            ).evaluate(scored)
            auc_pr = BinaryClassificationEvaluator(
                labelCol=LABEL, rawPredictionCol="rawPrediction", metricName="areaUnderPR"
            ).evaluate(scored)
        predicted = (F.col("_p") >= F.lit(threshold)).cast("double")
        # The top-decile cut from an approximate quantile: no global sort of every user.
        cut = scored.approxQuantile("_p", [1.0 - TOP_SHARE], 0.001)[0]
        row = scored.select(
            F.sum(((predicted == 1.0) & (F.col(LABEL) == 1.0)).cast("long")).alias("tp"),
            F.sum(((predicted == 1.0) & (F.col(LABEL) == 0.0)).cast("long")).alias("fp"),
            F.sum(((predicted == 0.0) & (F.col(LABEL) == 1.0)).cast("long")).alias("fn"),
            F.sum(((predicted == 0.0) & (F.col(LABEL) == 0.0)).cast("long")).alias("tn"),
            F.sum((F.col("_p") >= F.lit(cut)).cast("long")).alias("top_n"),
            F.sum(F.when(F.col("_p") >= F.lit(cut), F.col(LABEL))).alias("top_pos"),
        ).first()
    finally:
        scored.unpersist()
    tp, fp, fn, tn = (int(row[c] or 0) for c in ("tp", "fp", "fn", "tn"))
    base_rate = positives / n
    top_n = int(row["top_n"] or 0)
    precision_top = float(row["top_pos"] or 0) / top_n if top_n else 0.0

    def lift(value: float) -> float:
        return value / base_rate if base_rate > 0 and not math.isnan(value) else float("nan")

    return {
        "auc_roc": float(auc_roc),
        "auc_pr": float(auc_pr),
        "base_rate": base_rate,
        "auc_pr_lift": lift(auc_pr),
        "precision_top_decile": precision_top,
        "precision_top_decile_lift": lift(precision_top),
        "top_decile_users": top_n,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "accuracy": (tp + tn) / n,
        "test_users": n,
        "test_churn_rate": base_rate,
        "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
    }


def required_lift(base_rate: float, min_lift: float) -> float:
    """The AUC-PR lift a useful model must reach: ``min_lift``, or half-way to the largest
    lift possible (1 / base_rate) when the base rate is too high for ``min_lift``."""
    if base_rate <= 0:
        return min_lift
    return min(min_lift, (1.0 + 1.0 / base_rate) / 2.0)


def feature_importances(model: PipelineModel) -> dict[str, float]:
    forest = model.stages[-1]
    values = forest.featureImportances.toArray()
    return dict(sorted(((c, round(float(v), 4)) for c, v in zip(FEATURE_COLUMNS, values,
                                                                strict=True)),
                       key=lambda kv: -kv[1]))


def lake_date_range(events: DataFrame) -> tuple[date, date]:
    """First and last event_date present (cheap on a date-partitioned lake)."""
    row = events.agg(F.min(EVENT_DATE).alias("lo"), F.max(EVENT_DATE).alias("hi")).first()
    if row["lo"] is None:
        raise ValueError("the event lake is empty")
    return row["lo"], row["hi"]
