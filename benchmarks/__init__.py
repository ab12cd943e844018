"""Benchmarks (``make bench``) and the reliability suite (``make reliability``): measured, never asserted in tests."""
