"""Replay recorded samples through a policy, without an engine."""
