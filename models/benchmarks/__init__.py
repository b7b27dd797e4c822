"""Benchmarks run by ``convoy bench NAME``."""
