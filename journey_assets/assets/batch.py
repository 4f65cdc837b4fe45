"""Daily-partitioned batch analytics and ML assets over the Delta event lake.

Each asset is thin: it reads the partition's slice of one version of the lake (partition
pruning on event_date; the version is recorded as ``lake_version``), calls the pure transforms /
ML functions, replaces its MongoDB partition (``MongoResource.replace_partition``: deterministic
``_id``, written from the executors, stale documents removed by a run marker) and returns the
metadata a person would look at. The partition key is the as_of day.
"""


import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from journey_assets import lake as delta_lake
from journey_assets.ml import churn as churn_ml
from journey_assets.ml import segments as segment_ml
from journey_assets.partitions import as_of_partitions
from journey_assets.resources import LakeResource, MongoResource, SparkResource
from journey_assets.schedules import build_batch_job, build_batch_schedule
from journey_assets.schema import EVENT_DATE, EVENT_TYPES, USER_ID
from journey_assets.settings import Settings
from journey_assets.transforms import statistics, timeseries
from journey_assets.transforms.events import read_event_lake
from journey_assets.transforms.features import (
    AS_OF,
    DEFAULT_LOOKBACK_DAYS,
    FEATURE_COLUMNS,
    LOOKBACK_DAYS,
    build_user_features,
    read_lake_window,
    to_date,
    user_funnel,
    window_bounds,
)

GROUP = "batch_analytics"
USER_FEATURES = "user_feature_engineering"
CUSTOMER_SEGMENTS = "customer_segments"
CHURN_PREDICTIONS = "churn_predictions"
TIME_SERIES = "time_series_analysis"
STATISTICS = "statistical_analysis"
CHURN_AUC_CHECK = "churn_lift_plausible"
#: AUC-ROC at or above LEAKAGE_AUC smells of label leakage (the check fails).
LEAKAGE_AUC = 0.99
#: The lake the streaming assets write (journey_assets.streaming.sinks.ENRICHED_EVENTS): the
#: upstream of every batch asset, declared by key only (lineage, no import of streaming code).
EVENT_LAKE = dg.AssetKey("enriched_events")


# -- configuration ------------------------------------------------------------------------
class FeatureConfig(dg.Config):
    lookback_days: int = DEFAULT_LOOKBACK_DAYS


class SegmentConfig(dg.Config):
    k_min: int = 3
    k_max: int = 6
    use_pca: bool = True
    pca_k: int = 6
    max_iter: int = 30
    seed: int = 42
    #: Fit and choose k on a sample of at most this many users, then score everyone.
    max_fit_users: int = segment_ml.DEFAULT_MAX_FIT_USERS


class ChurnConfig(dg.Config):
    horizon_days: int = churn_ml.DEFAULT_HORIZON_DAYS
    num_trees: int = churn_ml.DEFAULT_NUM_TREES
    max_depth: int = churn_ml.DEFAULT_MAX_DEPTH
    #: Fit the forest on a seeded sample of at most this many users (evaluation and scoring
    #: stay on every user).
    max_train_users: int = churn_ml.DEFAULT_MAX_TRAIN_USERS
    threshold: float = 0.5
    seed: int = 42
    #: The churn population: buyers in the lookback, and/or users active on at least
    #: ``min_active_days`` distinct days of it (0: buyers only). See ml/churn.py.
    eligible_buyers: bool = True
    min_active_days: int = churn_ml.DEFAULT_MIN_ACTIVE_DAYS
    #: Staying means any event ("any") or a purchase ("purchase") in the horizon.
    activity: str = churn_ml.ANY_ACTIVITY
    #: The check passes at an AUC-PR of at least this multiple of the base rate (capped at
    #: half-way to 1 / base rate, the largest lift possible: ``churn_ml.required_lift``).
    min_auc_pr_lift: float = 1.25

    def eligibility(self) -> churn_ml.Eligibility:
        return churn_ml.Eligibility(buyers=self.eligible_buyers,
                                    min_active_days=self.min_active_days or None,
                                    activity=self.activity)


class TimeSeriesConfig(dg.Config):
    #: Days shown in the plot (and the trailing context of the moving averages).
    history_days: int = 30


# -- helpers ------------------------------------------------------------------------------
def features_path(lake: LakeResource, as_of: str) -> str:
    """The feature-store snapshot of one as_of (Parquet), read by the downstream assets."""
    return str(Path(lake.data_dir) / "lake" / "user_features" / f"as_of={as_of}")


def plots_dir(lake: LakeResource) -> Path:
    path = Path(lake.data_dir) / "plots"
    path.mkdir(parents=True, exist_ok=True)
    return path


def read_feature_snapshot(session: SparkSession, lake: LakeResource, as_of: str) -> DataFrame:
    path = features_path(lake, as_of)
    if not Path(path).exists():
        raise dg.Failure(f"no user features for as_of={as_of} at {path}: materialize "
                         f"{USER_FEATURES} for this partition first")
    return session.read.parquet(path)


def lake_span(session: SparkSession, lake: LakeResource, version: int | None = None):
    """First and last event_date in the lake (the partition column only: no data read)."""
    return churn_ml.lake_date_range(
        delta_lake.read_table(session, lake.events_path, version).select(EVENT_DATE))


def lake_version(session: SparkSession, lake: LakeResource) -> int:
    """The events table's version now: an asset reads this version throughout and records
    it, so its partition can be reproduced (time travel) until VACUUM's retention passes."""
    return delta_lake.table_version(session, lake.events_path)


def lake_span_or_none(session: SparkSession, lake: LakeResource) -> tuple[date, date] | None:
    """``lake_span``, or None when the lake has no events (yet): callers skip cleanly."""
    try:
        return lake_span(session, lake)
    except ValueError:
        return None
    except Exception as exc:  # no table at the path yet (Spark's AnalysisException)
        if "PATH_NOT_FOUND" in str(exc) or "is not a Delta table" in str(exc):
            return None
        raise


def partition_rows(frame: DataFrame, as_of: str, extra: dict[str, Any] | None = None
                   ) -> DataFrame:
    """Rows shaped as Mongo documents: deterministic ``_id`` ``"{user_id}:{as_of}"``, the
    ``as_of`` day and ``extra`` constants (written from the executors by ``replace_partition``)."""
    shaped = frame.withColumn("_id", F.concat_ws(":", F.col(USER_ID).cast("string"),
                                                 F.lit(as_of))).withColumn(AS_OF, F.lit(as_of))
    for name, value in (extra or {}).items():
        shaped = shaped.withColumn(name, F.lit(value))
    return shaped


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def skipped_result(reason: str, checks: Sequence[str] = ()) -> dg.MaterializeResult:
    """A materialization that says why it did nothing (an empty window: no events or users);
    declared checks get a WARN result saying they were not evaluated."""
    return dg.MaterializeResult(
        metadata={"skipped": reason, "documents": 0},
        check_results=[dg.AssetCheckResult(check_name=name, passed=False,
                                           severity=dg.AssetCheckSeverity.WARN,
                                           description=f"not evaluated: {reason}")
                       for name in checks])


def churn_check(metrics: dict[str, Any], min_lift: float) -> dg.AssetCheckResult:
    """Judge the model against its base rate (AUC-PR lift), not by raw AUC-PR, which mostly
    reflects the base rate; an AUC-ROC near 1 still fails as likely leakage."""
    base, lift, auc = metrics["base_rate"], metrics["auc_pr_lift"], metrics["auc_roc"]
    needed = churn_ml.required_lift(base, min_lift)
    if auc != auc or lift != lift:  # NaN: one class only in the test snapshot
        passed, verdict = False, f"undefined metrics: the test snapshot has base rate {base:.3f}"
    elif auc >= LEAKAGE_AUC:
        passed, verdict = False, (f"AUC-ROC {auc:.3f} >= {LEAKAGE_AUC}: suspiciously perfect, "
                                  "check for leakage")
    elif lift < needed:
        passed, verdict = False, (f"AUC-PR {metrics['auc_pr']:.3f} is {lift:.2f}x the base rate "
                                  f"{base:.3f}, below the required {needed:.2f}x")
    else:
        passed, verdict = True, (f"AUC-PR {metrics['auc_pr']:.3f} = {lift:.2f}x the base rate "
                                 f"{base:.3f} (>= {needed:.2f}x), AUC-ROC {auc:.3f}")
    return dg.AssetCheckResult(
        check_name=CHURN_AUC_CHECK, passed=passed, severity=dg.AssetCheckSeverity.ERROR,
        description=verdict,
        metadata={"auc_roc": auc, "auc_pr": metrics["auc_pr"], "base_rate": base,
                  "auc_pr_lift": lift, "required_lift": needed,
                  "precision_top_decile": metrics["precision_top_decile"]})


# -- assets -------------------------------------------------------------------------------
def build_batch_assets(partitions: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    """The five batch assets over ``partitions`` (daily, key = as_of day)."""

    @dg.asset(name=USER_FEATURES, partitions_def=partitions, group_name=GROUP,
              deps=[EVENT_LAKE], kinds={"spark", "parquet", "mongodb"},
              description="Per-user RFM, engagement and session features as of the partition "
                          "day over a lookback window; feature store snapshot + Mongo.")
    def user_feature_engineering(context: dg.AssetExecutionContext, config: FeatureConfig,
                                 spark: SparkResource, lake: LakeResource,
                                 mongo: MongoResource) -> dg.MaterializeResult:
        as_of = context.partition_key
        session = spark.get_session()
        start, end = window_bounds(as_of, config.lookback_days)
        version = lake_version(session, lake)
        events = read_lake_window(session, lake.events_path, start, end, version)
        path = features_path(lake, as_of)
        # unique: the events table is insert-only by event_id, no dedupe shuffle needed.
        build_user_features(events, as_of, config.lookback_days, unique=True) \
            .write.mode("overwrite").parquet(path)
        snapshot = session.read.parquet(path)
        written = mongo.replace_partition(USER_FEATURES, {AS_OF: as_of},
                                          partition_rows(snapshot, as_of), context.run_id)
        funnel = user_funnel(snapshot)
        means = snapshot.agg(*(F.avg(c).alias(c) for c in FEATURE_COLUMNS)).first()
        return dg.MaterializeResult(metadata={
            "lake_version": version,
            "users": written,
            "window": f"{start} .. {end}",
            "lookback_days": config.lookback_days,
            "feature_path": dg.MetadataValue.path(path),
            "funnel": dg.MetadataValue.md(markdown_table(
                ["step", "users", "rate"],
                [["viewed", funnel["users_with_view"], None],
                 ["carted", funnel["users_with_cart"], funnel["view_to_cart_rate"]],
                 ["purchased", funnel["users_with_purchase"], funnel["cart_to_purchase_rate"]],
                 ["view -> purchase", None, funnel["view_to_purchase_rate"]]])),
            "feature_means": dg.MetadataValue.md(markdown_table(
                ["feature", "mean"],
                [[c, float(means[c]) if means[c] is not None else None]
                 for c in FEATURE_COLUMNS])),
        })

    @dg.asset(name=CUSTOMER_SEGMENTS, partitions_def=partitions, group_name=GROUP,
              deps=[user_feature_engineering], kinds={"spark", "mongodb"},
              description="KMeans customer segments (k by silhouette) with named profiles.")
    def customer_segments(context: dg.AssetExecutionContext, config: SegmentConfig,
                          spark: SparkResource, lake: LakeResource,
                          mongo: MongoResource) -> dg.MaterializeResult:
        as_of = context.partition_key
        session = spark.get_session()
        features = read_feature_snapshot(session, lake, as_of)
        if features.isEmpty():  # an empty window: no users, nothing to cluster
            return skipped_result(f"no users in the feature snapshot of {as_of}")
        features = features.cache()
        try:
            result = segment_ml.fit_segments(
                features, range(config.k_min, config.k_max + 1), use_pca=config.use_pca,
                pca_k=config.pca_k, seed=config.seed, max_iter=config.max_iter,
                max_fit_users=config.max_fit_users)
            model_version = f"{as_of}-{context.run_id[:8]}"
            model_path = lake.model_path("segments", model_version)
            result.model.write().overwrite().save(model_path)
            assigned = segment_ml.assign_segments(result.model, features).select(
                USER_ID, segment_ml.SEGMENT)
            names = result.names
            segment_names = F.create_map(*(F.lit(v) for k in sorted(names)
                                           for v in (k, names[k])))
            rows = partition_rows(assigned, as_of, {"model_version": model_version}).withColumn(
                segment_ml.SEGMENT_NAME, segment_names[F.col(segment_ml.SEGMENT)])
            written = mongo.replace_partition(CUSTOMER_SEGMENTS, {AS_OF: as_of}, rows,
                                              context.run_id)
        finally:
            features.unpersist()
        context.log.info(f"segments k={result.k}, silhouettes {result.silhouettes}")
        return dg.MaterializeResult(metadata={
            "users": written,
            "k": result.k,
            "silhouette": result.silhouettes[result.k],
            "silhouette_by_k": dg.MetadataValue.md(markdown_table(
                ["k", "silhouette"], [[k, s] for k, s in sorted(result.silhouettes.items())])),
            "silhouette_scores": {str(k): s for k, s in result.silhouettes.items()},
            "segment_profiles": dg.MetadataValue.md(
                segment_ml.profiles_markdown(result.profiles, names)),
            "segment_names": {str(s): n for s, n in sorted(names.items())},
            "model_version": model_version,
            "model_path": dg.MetadataValue.path(model_path),
        })

    @dg.asset(name=CHURN_PREDICTIONS, partitions_def=partitions, group_name=GROUP,
              deps=[user_feature_engineering, EVENT_LAKE], kinds={"spark", "mongodb"},
              check_specs=[dg.AssetCheckSpec(
                  CHURN_AUC_CHECK, asset=CHURN_PREDICTIONS,
                  description="test AUC-PR lift over the churn base rate >= min_auc_pr_lift "
                              "(a model no better than the base rate is useless) and AUC-ROC "
                              f"< {LEAKAGE_AUC} (higher smells of label leakage)")],
              description="RandomForest churn probability per eligible customer (bought, or "
                          "active on several days, in the lookback; churned = no activity in "
                          "the next horizon days), trained and tested on earlier full-lookback "
                          "snapshots.")
    def churn_predictions(context: dg.AssetExecutionContext, config: ChurnConfig,
                          spark: SparkResource, lake: LakeResource,
                          mongo: MongoResource) -> dg.MaterializeResult:
        as_of = context.partition_key
        session = spark.get_session()
        eligibility = config.eligibility()
        predict_features = read_feature_snapshot(session, lake, as_of)
        lookback_row = predict_features.select(LOOKBACK_DAYS).first()
        if lookback_row is None:  # an empty window: nobody to score
            return skipped_result(f"no users in the feature snapshot of {as_of}: nothing to "
                                  "score", [CHURN_AUC_CHECK])
        lookback = int(lookback_row[0])
        version = lake_version(session, lake)
        first, last = lake_span(session, lake, version)
        try:
            plan = churn_ml.plan_snapshots(as_of, config.horizon_days, first, last, lookback)
        except churn_ml.NotEnoughHistory as exc:
            raise dg.Failure(description=str(exc),
                             metadata={"missing_days": exc.missing_days,
                                       "lake_span": f"{first} .. {last}",
                                       "lookback_days": lookback,
                                       "horizon_days": config.horizon_days}) from exc
        read_from, read_to = plan.read_span
        # Only the days the train and test snapshots need (features and labels).
        events = read_lake_window(session, lake.events_path, read_from, read_to, version)
        train, test = churn_ml.train_test_snapshots(events, plan, lookback, predict_features,
                                                    eligibility, unique=True)
        try:
            model = churn_ml.fit_churn_model(train, config.num_trees, config.max_depth,
                                             config.seed, config.max_train_users)
            metrics = churn_ml.evaluate(model, test, config.threshold)
            train_users, train_churn_rate = train.agg(F.count(F.lit(1)),
                                                      F.avg(churn_ml.LABEL)).first()
        finally:
            train.unpersist()
            test.unpersist()
        model_version = f"{as_of}-{context.run_id[:8]}"
        model_path = lake.model_path("churn", model_version)
        model.write().overwrite().save(model_path)
        # Users outside the population were never customers: no churn score for them.
        scored = churn_ml.score(model, churn_ml.eligible(predict_features, eligibility),
                                config.threshold).select(
            USER_ID, churn_ml.CHURN_PROBABILITY, churn_ml.CHURN_PREDICTION)
        scored = scored.persist()  # written, then counted: one scoring pass
        try:
            written = mongo.replace_partition(
                CHURN_PREDICTIONS, {AS_OF: as_of},
                partition_rows(scored, as_of, {"model_version": model_version}), context.run_id)
            predicted_churners = scored.where(F.col(churn_ml.CHURN_PREDICTION) == 1).count()
        finally:
            scored.unpersist()
        importances = churn_ml.feature_importances(model)

        check = churn_check(metrics, config.min_auc_pr_lift)
        windows = [w.as_dict() for w in plan.windows]
        return dg.MaterializeResult(
            metadata={
                "lake_version": version,
                "users_scored": written,
                "predicted_churners": predicted_churners,
                "population": eligibility.describe(),
                "base_rate": metrics["base_rate"],
                "auc_pr": metrics["auc_pr"],
                "auc_pr_lift": metrics["auc_pr_lift"],
                "precision_top_decile": metrics["precision_top_decile"],
                "precision_top_decile_lift": metrics["precision_top_decile_lift"],
                "auc_roc": metrics["auc_roc"],
                "precision": metrics["precision"],
                "recall": metrics["recall"],
                "accuracy": metrics["accuracy"],
                "test_users": metrics["test_users"],
                "test_churn_rate": metrics["test_churn_rate"],
                "train_users": train_users,
                "train_churn_rate": float(train_churn_rate or 0.0),
                "confusion_matrix": metrics["confusion"],
                "train_as_of": plan.train_as_of.isoformat(),
                "test_as_of": plan.test_as_of.isoformat(),
                "windows": dg.MetadataValue.md(markdown_table(
                    ["snapshot", "as_of", "lookback (features)", "label window"],
                    [[w["role"], w["as_of"], w["lookback"], w["label"]] for w in windows])),
                "snapshot_windows": dg.MetadataValue.json(windows),
                "lake_span": f"{first} .. {last}",
                "label_window_complete_for_as_of": plan.predict_label_complete,
                "horizon_days": config.horizon_days,
                "lookback_days": lookback,
                "num_trees": config.num_trees,
                "max_depth": config.max_depth,
                "max_train_users": config.max_train_users,
                "feature_importances": dg.MetadataValue.md(markdown_table(
                    ["feature", "importance"], list(importances.items()))),
                "model_version": model_version,
                "model_path": dg.MetadataValue.path(model_path),
            },
            check_results=[check],
        )

    @dg.asset(name=TIME_SERIES, partitions_def=partitions, group_name=GROUP,
              deps=[EVENT_LAKE], kinds={"spark", "mongodb"},
              description="Daily counts per event_type with 7/3-day moving averages and "
                          "day-over-day growth; hour-of-day profile; trend plot.")
    def time_series_analysis(context: dg.AssetExecutionContext, config: TimeSeriesConfig,
                             spark: SparkResource, lake: LakeResource,
                             mongo: MongoResource) -> dg.MaterializeResult:
        day = to_date(context.partition_key)
        session = spark.get_session()
        # The data's own calendar: the series starts at the lake's first day (no zero days
        # before it), and a day past the lake's last one has no data yet.
        span = lake_span_or_none(session, lake)
        version = lake_version(session, lake) if span is not None else None
        if span is None or not span[0] <= day <= span[1]:
            return skipped_result(f"{day} is outside the lake's days "
                                  f"({'empty lake' if span is None else f'{span[0]} .. {span[1]}'})")
        # 6 extra days so that the first plotted day's 7-day average is complete.
        start = max(day - timedelta(days=config.history_days - 1 + 6), span[0])
        events = read_event_lake(session, lake.events_path, start.isoformat(), day.isoformat(),
                                 version)
        trends = timeseries.with_trends(
            timeseries.daily_event_counts(events, start, day, first_day=span[0]))
        history = [r.asDict() for r in trends.orderBy(timeseries.DATE, "event_type").collect()
                   if r[timeseries.DATE] > day - timedelta(days=config.history_days)]
        day_events = events.where(F.col(EVENT_DATE) == F.lit(day.isoformat()).cast("date"))
        hourly = {r[timeseries.HOUR]: r.asDict()
                  for r in timeseries.hourly_event_pivot(day_events).collect()}
        docs = []
        for r in history:
            if r[timeseries.DATE] != day:
                continue
            t = r["event_type"]
            docs.append({
                "_id": f"{day.isoformat()}:{t}", "date": day.isoformat(), "event_type": t,
                "event_count": int(r["event_count"]), "ma_7d": float(r["ma_7d"]),
                "ma_3d": float(r["ma_3d"]),
                "dod_growth": None if r["dod_growth"] is None else float(r["dod_growth"]),
                # The hour-of-day x event_type pivot, one 24-slot row per event_type.
                "hourly_counts": [int(hourly.get(h, {}).get(t, 0)) for h in range(24)],
            })
        written = mongo.replace_partition(TIME_SERIES, {"date": day.isoformat()}, docs,
                                          context.run_id)
        png = plots_dir(lake) / f"time_series_{day.isoformat()}.png"
        _plot_trends(history, png)
        encoded = base64.b64encode(png.read_bytes()).decode("ascii")
        return dg.MaterializeResult(metadata={
            "lake_version": version,
            "documents": written,
            "day": dg.MetadataValue.md(markdown_table(
                ["event_type", "event_count", "ma_3d", "ma_7d", "dod_growth"],
                [[d["event_type"], d["event_count"], d["ma_3d"], d["ma_7d"], d["dod_growth"]]
                 for d in docs])),
            "hour_of_day": dg.MetadataValue.md(markdown_table(
                ["hour", *EVENT_TYPES],
                [[h, *(int(hourly.get(h, {}).get(t, 0)) for t in EVENT_TYPES)]
                 for h in range(24)])),
            "plot_path": dg.MetadataValue.path(str(png)),
            "plot": dg.MetadataValue.md(f"![daily events](data:image/png;base64,{encoded})"),
        })

    @dg.asset(name=STATISTICS, partitions_def=partitions, group_name=GROUP,
              deps=[user_feature_engineering, EVENT_LAKE], kinds={"spark", "mongodb"},
              description="Price percentiles per category, feature correlations, chi-square of "
                          "price tier vs purchase, skewness and kurtosis.")
    def statistical_analysis(context: dg.AssetExecutionContext, spark: SparkResource,
                             lake: LakeResource, mongo: MongoResource) -> dg.MaterializeResult:
        as_of = context.partition_key
        session = spark.get_session()
        features = read_feature_snapshot(session, lake, as_of)
        if features.isEmpty():  # an empty window: no statistics of nothing
            return skipped_result(f"no users in the feature snapshot of {as_of}")
        features = features.cache()
        lookback = int(features.select(LOOKBACK_DAYS).first()[0])
        start, end = window_bounds(as_of, lookback)
        version = lake_version(session, lake)
        events = read_event_lake(session, lake.events_path, start.isoformat(),
                                 end.isoformat(), version).cache()
        try:
            percentiles = statistics.price_percentiles(events)
            correlation = statistics.correlation_matrix(features, FEATURE_COLUMNS)
            chi_square = statistics.chi_square_price_tier_vs_purchase(events)
            shape = statistics.distribution_shape(features, FEATURE_COLUMNS)
        finally:
            features.unpersist()
            events.unpersist()
        base = {AS_OF: as_of, "window_start": start.isoformat(), "window_end": end.isoformat()}
        docs = [
            {"_id": f"price_percentiles:{as_of}", "analysis": "price_percentiles", **base,
             "by_category_l1": percentiles},
            {"_id": f"feature_correlation:{as_of}", "analysis": "feature_correlation", **base,
             "method": "pearson", "columns": list(FEATURE_COLUMNS),
             # {row feature: {column feature: r}}: FerretDB rejects nested arrays.
             "matrix": {a: dict(zip(FEATURE_COLUMNS, row, strict=True))
                        for a, row in zip(FEATURE_COLUMNS, correlation, strict=True)}},
            {"_id": f"chi_square_price_tier_purchase:{as_of}",
             "analysis": "chi_square_price_tier_purchase", **base, **chi_square},
            {"_id": f"feature_distribution:{as_of}", "analysis": "feature_distribution", **base,
             "columns": shape},
        ]
        written = mongo.replace_partition(STATISTICS, {AS_OF: as_of}, docs, context.run_id)
        pairs = [(FEATURE_COLUMNS[i], FEATURE_COLUMNS[j], correlation[i][j])
                 for i in range(len(FEATURE_COLUMNS)) for j in range(i + 1, len(FEATURE_COLUMNS))
                 if correlation[i][j] is not None]
        strongest = sorted(pairs, key=lambda p: -abs(p[2]))[:8]
        pct_keys = [k for k in percentiles[0] if k.startswith("p")] if percentiles else []
        return dg.MaterializeResult(metadata={
            "lake_version": version,
            "documents": written,
            "chi_square_statistic": chi_square["statistic"],
            "chi_square_p_value": chi_square["p_value"],
            "price_percentiles": dg.MetadataValue.md(markdown_table(
                ["category_l1", "events", "mean", *pct_keys],
                [[p["category_l1"], p["events"], p["mean"], *(p[k] for k in pct_keys)]
                 for p in percentiles])),
            "strongest_correlations": dg.MetadataValue.md(markdown_table(
                ["feature", "feature", "pearson"], strongest)),
            "skewness_kurtosis": dg.MetadataValue.md(markdown_table(
                ["feature", "mean", "stddev", "skewness", "kurtosis"],
                [[c, s["mean"], s["stddev"], s["skewness"], s["kurtosis"]]
                 for c, s in shape.items()])),
        })

    return [user_feature_engineering, customer_segments, churn_predictions,
            time_series_analysis, statistical_analysis]


def _plot_trends(history: list[dict[str, Any]], path: Path) -> None:
    """One panel per event_type: daily count and its 7-day moving average."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on servers
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 6), sharex=True)
    for ax, event_type in zip(axes.flat, EVENT_TYPES, strict=True):
        rows = [r for r in history if r["event_type"] == event_type]
        days = [r["date"] for r in rows]
        ax.plot(days, [r["event_count"] for r in rows], marker=".", label="daily")
        ax.plot(days, [r["ma_7d"] for r in rows], label="7-day avg")
        ax.set_title(event_type)
        ax.tick_params(axis="x", rotation=45, labelsize=7)
    axes.flat[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


@dataclass(frozen=True)
class BatchDefinitions:
    assets: list[dg.AssetsDefinition]
    jobs: list[Any]  # unresolved asset jobs (define_asset_job)
    schedules: list[dg.ScheduleDefinition]


def build_batch_definitions(settings: Settings) -> BatchDefinitions:
    """Assets, the partitioned job and its schedule, over the data's as_of days."""
    partitions = as_of_partitions(settings)
    assets = build_batch_assets(partitions)
    job = build_batch_job(assets, partitions)

    def span_of(context: dg.ScheduleEvaluationContext) -> tuple[date, date] | None:
        # A Spark session in the schedule's process: lake_span reads only the partition
        # column (the daemon pays the session start-up once per code-server process).
        return lake_span_or_none(context.resources.spark.get_session(), context.resources.lake)

    schedule = build_batch_schedule(job, partitions, span_of, floor=settings.partitions_start,
                                    required_resource_keys={"spark", "lake"})
    return BatchDefinitions(assets=assets, jobs=[job], schedules=[schedule])
