"""hfcast."""
