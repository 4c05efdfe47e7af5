"""Ask the API once, before the ledger is touched, whether the key and the base
URL work: a rejected key or an API that cannot be reached is reported with
nothing sent and nothing written (no batch, no "N new item(s)").

The account call is free and safe to retry; an answer that says nothing
about the key (a 5xx, a garbled body) is left to the preflight that follows.
"""

from __future__ import annotations

from batcher.client import retry
from batcher.client.magic_hour import MagicHourClient
from batcher.errors import AuthError, ConfigError, ConnectError
from batcher.settings import API_KEY_ENV, BASE_URL_ENV, ApiConfig


async def check_api_first(api: ApiConfig) -> None:
    """ConfigError (exit 2) when the API rejects the key; ConnectError (exit 1)
    when nothing answers at the base URL."""
    async with MagicHourClient(api, concurrency=1) as client:
        try:
            await retry.read(client.get_account)
        except AuthError as exc:
            raise ConfigError(
                f"the API rejected the key in {API_KEY_ENV} (HTTP 401: {exc.message}); "
                f"set a valid key in {API_KEY_ENV}. Nothing was sent or written"
            ) from None
        except ConnectError as exc:
            raise ConnectError(
                f"{exc}. Check the base URL {api.base_url} (--base-url or {BASE_URL_ENV}); "
                "nothing was sent or written"
            ) from None
        except Exception:
            return
