"""Operating a deployment: topics, metrics export, logging and erasure requests."""
