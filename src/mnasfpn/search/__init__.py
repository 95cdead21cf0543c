"""Latency-aware architecture search (docs/design.md §8): strategies that propose genotypes of
a search space, latency from a measured table, children evaluated by the proxy task in
worker processes, every trial kept in a SQLite store so a killed search resumes.

Imports only the search spaces and the latency table; training is reached through the
proxy API inside workers, so TensorFlow never loads in the driver."""
