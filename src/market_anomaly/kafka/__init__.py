"""Kafka: a local KRaft broker the project starts itself, and topic administration."""
