"""Benchmarks: commands that print figures (see README, "Benchmarks")."""
