"""Process fixtures (filled in by the integration tests)."""
