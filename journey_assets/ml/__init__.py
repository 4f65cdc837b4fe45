"""Spark ML models over user features: customer segments (KMeans) and churn (RandomForest)."""
