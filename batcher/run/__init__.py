"""Stage 2 of the pipeline: the pool that sends creates, follows renders and saves files."""
