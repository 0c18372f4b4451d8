"""Helpers shared by the test suites (model builders, fixtures generated in code)."""
