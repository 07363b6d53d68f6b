"""Prometheus configuration and a runner for a local Prometheus server."""
