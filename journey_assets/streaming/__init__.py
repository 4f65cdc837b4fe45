"""Kafka -> Spark Structured Streaming -> MongoDB and the Delta event lake."""
