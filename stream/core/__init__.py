"""The pure pipeline: event schema, session state, recommender and the batch core. No Kafka, no Faust, no I/O."""
