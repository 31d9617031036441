"""Data: the contract (schema), validation and quarantine, the market simulator, ingest."""
