"""Stage 5 of the pipeline: what the ledger says, for people and programs."""
