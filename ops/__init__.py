"""Operations: the local Kafka broker launcher and the monitoring configuration."""
