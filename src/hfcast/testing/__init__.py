"""Test and demo helpers (local servers); not part of the library's public API."""
