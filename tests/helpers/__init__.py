"""Helpers shared by the unit and integration tests (imported as ``tests.helpers.<module>``)."""
