"""Kafka and Faust: events in, recommendations out. Composes :mod:`engines` and :mod:`index`."""
from stream.clients import EventProducer, RecommendationConsumer
from stream.core.schema import Event, EventValidator
from stream.errors import BrokerError, ConfigError, InvalidEvent, ShopstreamError
from stream.settings import Settings

__all__ = ["Settings", "Event", "EventValidator", "EventProducer", "RecommendationConsumer",
           "ShopstreamError", "ConfigError", "BrokerError", "InvalidEvent"]
