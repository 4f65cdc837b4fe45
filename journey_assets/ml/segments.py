"""Customer segmentation: a Spark ML Pipeline (log transform, VectorAssembler, StandardScaler,
optional PCA, KMeans) with k chosen by silhouette, and segment names read off the centroids."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.clustering import KMeans
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.feature import PCA, SQLTransformer, StandardScaler, VectorAssembler
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from journey_assets.schema import USER_ID
from journey_assets.transforms.features import FEATURE_COLUMNS

SEGMENT = "segment"
#: KMeans (and the choice of k) are fitted on a seeded sample of at most this many users, every
#: user is then assigned exactly. 50k users pin 3-6 centroids in 6 PCA dimensions well, and the
#: cost of the k sweep (4 fits of up to 30 passes, plus silhouettes) then no longer grows with
#: the number of users.
DEFAULT_MAX_FIT_USERS = 50_000
SEGMENT_NAME = "segment_name"
#: Heavy-tailed features enter the model as log1p(x): otherwise a handful of power users
#: dominate the scaled space and KMeans spends its clusters on outliers.
LOG_FEATURES: tuple[str, ...] = (
    "frequency", "monetary", "views", "carts", "remove_from_cart", "purchases", "sessions",
    "avg_session_duration_s", "category_diversity", "avg_price", "active_days",
)
#: Features the profiles (and hence the names) are described by, in original units.
PROFILE_COLUMNS: tuple[str, ...] = (
    "recency_days", "frequency", "monetary", "views", "carts", "purchases", "sessions",
    "cart_abandonment_rate", "active_days", "avg_price",
)


@dataclass
class SegmentationResult:
    model: PipelineModel
    k: int
    silhouettes: dict[int, float]
    # segment id -> {"users": n, <profile column>: mean, ...}
    profiles: dict[int, dict[str, float]] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)


def _model_input_columns() -> list[str]:
    return [f"log_{c}" if c in LOG_FEATURES else c for c in FEATURE_COLUMNS]


def preparation_stages(use_pca: bool, pca_k: int) -> list[Any]:
    """Stages before KMeans: log1p of skewed features, assemble, standardize, optional PCA."""
    log_exprs = ", ".join(f"log1p(CAST({c} AS DOUBLE)) AS log_{c}" for c in LOG_FEATURES)
    stages: list[Any] = [
        SQLTransformer(statement=f"SELECT *, {log_exprs} FROM __THIS__"),
        VectorAssembler(inputCols=_model_input_columns(), outputCol="raw_features",
                        handleInvalid="keep"),
        StandardScaler(inputCol="raw_features", outputCol="scaled_features",
                       withMean=True, withStd=True),
    ]
    if use_pca:
        stages.append(PCA(k=min(pca_k, len(FEATURE_COLUMNS)), inputCol="scaled_features",
                          outputCol="model_features"))
    else:
        stages.append(SQLTransformer(
            statement="SELECT *, scaled_features AS model_features FROM __THIS__"))
    return stages


def fit_segments(features: DataFrame, k_values: Sequence[int] = (3, 4, 5, 6),
                 use_pca: bool = True, pca_k: int = 6, seed: int = 42,
                 max_iter: int = 30,
                 max_fit_users: int | None = DEFAULT_MAX_FIT_USERS) -> SegmentationResult:
    """Fit the preparation once, KMeans for every k, keep the k with the best silhouette.

    With ``max_fit_users`` the models are fitted (and k chosen) on a seeded random sample of
    that many users, then every user is scored: centroids of 100k users are as good as of
    all, at a fraction of the cost of 4 KMeans fits over everyone.
    Returns the whole fitted PipelineModel (preparation + chosen KMeans), so scoring a new
    snapshot is ``model.transform(features)``.
    """
    k_values = sorted({int(k) for k in k_values if int(k) >= 2})
    if not k_values:
        raise ValueError("k_values needs at least one k >= 2")
    fit_on = features
    if max_fit_users is not None:
        total = features.count()
        if total > max_fit_users:
            fit_on = features.sample(fraction=max_fit_users / total, seed=seed)
    prep = Pipeline(stages=preparation_stages(use_pca, pca_k)).fit(fit_on)
    prepared = prep.transform(fit_on).select(USER_ID, "model_features").cache()
    try:
        n_users = prepared.count()
        if n_users <= max(k_values):
            raise ValueError(f"{n_users} users cannot be split into up to {max(k_values)} segments")
        evaluator = ClusteringEvaluator(featuresCol="model_features", predictionCol=SEGMENT,
                                        metricName="silhouette", distanceMeasure="squaredEuclidean")
        silhouettes: dict[int, float] = {}
        models = {}
        for k in k_values:
            kmeans = KMeans(k=k, seed=seed, maxIter=max_iter, featuresCol="model_features",
                            predictionCol=SEGMENT)
            model = kmeans.fit(prepared)
            silhouettes[k] = float(evaluator.evaluate(model.transform(prepared)))
            models[k] = model
    finally:
        prepared.unpersist()
    best_k = max(silhouettes, key=lambda k: (silhouettes[k], -k))
    pipeline_model = PipelineModel(stages=[*prep.stages, models[best_k]])
    result = SegmentationResult(model=pipeline_model, k=best_k, silhouettes=silhouettes)
    result.profiles = segment_profiles(assign_segments(pipeline_model, features))
    result.names = name_segments(result.profiles)
    return result


def assign_segments(model: PipelineModel, features: DataFrame) -> DataFrame:
    """The features with an int ``segment`` column (the model's other columns dropped)."""
    scored = model.transform(features)
    return scored.select(*features.columns, F.col(SEGMENT).cast("int").alias(SEGMENT))


def segment_profiles(segmented: DataFrame) -> dict[int, dict[str, float]]:
    """Mean of each profile column per segment (original units), plus the user count."""
    rows = segmented.groupBy(SEGMENT).agg(
        F.count(F.lit(1)).alias("users"),
        *(F.avg(c).alias(c) for c in PROFILE_COLUMNS),
    ).collect()
    return {
        int(r[SEGMENT]): {"users": int(r["users"]),
                          **{c: round(float(r[c]), 4) for c in PROFILE_COLUMNS}}
        for r in rows
    }


def name_segments(profiles: dict[int, dict[str, float]]) -> dict[int, str]:
    """Human names from centroid profiles, each rule claiming the best remaining segment.

    Order of claims: the biggest spenders ("High-value loyal"), the longest absent ("At-risk"),
    the fewest purchases ("Browsers"), the highest cart abandonment ("Cart abandoners"), the
    most active days ("Engaged regulars"); any left are "Occasional visitors" (numbered).
    Names are relative to the other segments of the same fit, which is what a profile means.
    """
    remaining = set(profiles)
    names: dict[int, str] = {}

    def claim(name: str, key) -> None:
        if not remaining:
            return
        chosen = max(sorted(remaining), key=key)
        names[chosen] = name
        remaining.discard(chosen)

    claim("High-value loyal", lambda s: (profiles[s]["monetary"], profiles[s]["purchases"]))
    claim("At-risk", lambda s: profiles[s]["recency_days"])
    claim("Browsers", lambda s: (-profiles[s]["purchases"], profiles[s]["views"]))
    claim("Cart abandoners", lambda s: profiles[s]["cart_abandonment_rate"])
    claim("Engaged regulars", lambda s: profiles[s]["active_days"])
    for i, s in enumerate(sorted(remaining), start=1):
        names[s] = "Occasional visitors" if len(remaining) == 1 else f"Occasional visitors {i}"
    return names


def profiles_markdown(profiles: dict[int, dict[str, float]], names: dict[int, str]) -> str:
    """The segment profiles as a markdown table (one row per segment)."""
    header = ["segment", "name", "users", *PROFILE_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in sorted(profiles):
        p = profiles[s]
        cells = [str(s), names.get(s, ""), str(p["users"]),
                 *(f"{p[c]:.2f}" for c in PROFILE_COLUMNS)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
