"""Helpers that make a training process fail for real, for the fault tests."""
