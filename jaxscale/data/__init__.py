"""Data: datasets on disk and in memory, and the one input pipeline (resident or streamed)."""
