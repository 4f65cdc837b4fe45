"""Kafka -> Spark Structured Streaming -> MongoDB and the Parquet lake (issue 4)."""
