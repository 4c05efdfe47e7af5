"""Stage 1 of the pipeline: job files in, validated items and plans out (pure)."""
