"""Evaluation of trained models that both the trainers and the benchmarks use (so that
neither imports the other)."""
