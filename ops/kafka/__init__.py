"""The local Kafka broker (kafka.sh) and Python helpers around it."""
