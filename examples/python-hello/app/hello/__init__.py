"""A tiny HTTP service for the fuse python example."""
