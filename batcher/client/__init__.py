"""Stage 3 of the pipeline: HTTP to the Magic Hour API, its pool, the one retry policy."""
