"""Data: datasets, the one data path (resident or streaming), readers and sharding."""
