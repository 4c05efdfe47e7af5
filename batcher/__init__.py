"""batcher: bulk image generation against Magic Hour's AI Image Generator API.

Resumable, budgeted and audited: every item is recorded in a ledger before it
is sent, so no work is lost and nothing is paid twice.
"""

__version__ = "0.1.0"
