"""crm-stream's shared, vendor-agnostic core: settings, Kafka clients, Avro serde, metrics, CLI."""

__version__ = "0.1.0"
