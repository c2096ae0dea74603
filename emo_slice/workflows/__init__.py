"""Workflows: one module per user workflow, each taking one frozen typed spec (the CLI only calls these)."""
