"""Every error batcher raises on purpose derives from one root.

    BatcherError                      exit 1 unless a subclass says otherwise
    ├── InputError                    exit 2: bad input or configuration, nothing sent
    │   ├── JobFileError              one or more problems in job files (FILE:LINE: field: msg)
    │   ├── CatalogError              the model catalog file is unusable
    │   ├── ConfigError               a setting is missing or wrong (no API key, bad URL...)
    │   │   └── LedgerMissingError    a reading command was pointed at no ledger
    │   ├── PreflightError            the account cannot pay for or is not allowed the run
    │   ├── OutputFolderError         the output folder cannot be made or written (also an
    │   │                             OutputError); found before anything is sent
    │   └── ReviewError               a review names no image of the batch, or no verdict
    ├── ApiError                      the API answered with a non-2xx status
    │   ├── AuthError                 401: the key was rejected (exit 2)
    │   └── DownloadExpiredError      403/404/410 on a signed download URL: GET the project again
    ├── TransportError                no usable answer came back
    │   ├── ConnectError              the request surely never reached the server
    │   └── ResponseLostError         the request may have been processed; answer lost
    │       └── MalformedResponseError  a 2xx answer with an unusable body (a create: maybe charged)
    │           └── BodyTooLargeError   an API answer over --max-body-bytes (read no further)
    ├── BadDownloadError              a completed render gave no usable image: too few URLs, or a
    │   │                             body that is empty, not an image or over the size cap
    │   ├── NotAnImageError           a downloaded file is not a PNG, JPEG or WebP image
    │   └── DownloadTooLargeError     a download went over --max-image-bytes (stopped there)
    ├── LedgerError                   the ledger database is unusable
    │   ├── LedgerBusyError           locked by another process for longer than the busy timeout
    │   ├── LedgerCorruptError        exit 2: not a SQLite database, or a damaged one
    │   ├── LedgerReadOnlyError       exit 2: the file or its folder cannot be written
    │   ├── LedgerVersionError        exit 2: a schema revision this batcher does not know
    │   └── LedgerLostError           unavailable past --ledger-hold, or its file went away
    └── OutputError                   an output file or folder cannot be read or written

httpx, SQLAlchemy, YAML and disk (OSError) exceptions are translated into these at the module
that talks to them and never escape the library.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Self

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_INPUT = 2
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C): 128 + 2, as shells report it
EXIT_TERMINATED = 143  # SIGTERM (cron, systemd): 128 + 15


class BatcherError(Exception):
    """Root of every error batcher raises on purpose."""

    exit_code: int = EXIT_FAILURE


class InputError(BatcherError):
    """Bad input or configuration, caught before anything was sent."""

    exit_code = EXIT_INPUT


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with an input file, located as precisely as we can."""

    path: str
    line: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        location = self.path if self.line is None else f"{self.path}:{self.line}"
        if self.field:
            return f"{location}: {self.field}: {self.message}"
        return f"{location}: {self.message}"


class JobFileError(InputError):
    """One or more problems found in job files; all of them, not only the first.

    `files` and `bad_files` count the job files checked and those with a
    problem, when known; `warnings` are those of the files that loaded.
    """

    def __init__(
        self,
        problems: Iterable[Problem],
        *,
        files: int | None = None,
        bad_files: int | None = None,
        warnings: Iterable[Problem] = (),
    ) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        self.files = files
        self.bad_files = bad_files
        self.warnings: tuple[Problem, ...] = tuple(warnings)
        super().__init__("\n".join(str(p) for p in self.problems))


class CatalogError(InputError):
    """The model catalog file cannot be used."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(f"{path}: {message}")


class ConfigError(InputError):
    """A setting is missing or invalid."""


class LedgerMissingError(ConfigError):
    """A command that only reads the ledger was pointed at a SQLite file that does not exist."""


class PreflightError(InputError):
    """The account cannot pay for, or is not allowed, what the job asks."""

    def __init__(self, message: str, details: Sequence[str] = ()) -> None:
        self.details = tuple(details)
        super().__init__("\n".join([message, *self.details]))


class ApiError(BatcherError):
    """The API answered with a non-2xx status."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        self.status = status
        self.message = message
        self.retry_after = retry_after
        super().__init__(f"HTTP {status}: {message}")


class AuthError(ApiError):
    """401: the API rejected the key. A configuration error, so exit 2."""

    exit_code = EXIT_INPUT


class DownloadExpiredError(ApiError):
    """A signed download URL was refused (403/404/410): it expired or is invalid.

    Retrying the same URL is pointless; a new GET of the project gives fresh ones.
    """


class TransportError(BatcherError):
    """No usable HTTP answer came back."""


class ConnectError(TransportError):
    """The request surely never reached the server (connection refused, DNS, TLS setup)."""


class ResponseLostError(TransportError):
    """The request went out but no complete answer came back: it may have been processed."""


class MalformedResponseError(ResponseLostError):
    """A 2xx answer whose body cannot be used (not JSON, no project id...).

    A ResponseLostError because, for a create, the server accepted the request
    and may have charged for it. `project_id` is set when the answer had an id
    but not the rest (the charge), so the item can still be found and polled.
    """

    def __init__(self, message: str, *, project_id: str | None = None) -> None:
        self.project_id = project_id
        super().__init__(message)


class BodyTooLargeError(MalformedResponseError):
    """An API answer (create, poll, account) grew past `--max-body-bytes`; it was
    read no further. Like any unusable answer: a create is in doubt, a poll is
    tried again later."""

    def __init__(self, what: str, limit: int) -> None:
        self.limit = limit
        super().__init__(
            f"{what}: the answer is larger than the {limit:,}-byte cap (--max-body-bytes); "
            "it may have been processed"
        )


class BadDownloadError(BatcherError):
    """A completed render gave no usable image: the project listed fewer download
    URLs than the images ordered, or a body was empty, not an image, or over the
    size cap. Not a disk error and not retried as such: the follower asks the
    project again for fresh URLs, a few times, then fails the item with this
    reason (`resume` polls it again; the render was paid, it is never re-created).
    """


class NotAnImageError(BadDownloadError):
    """A downloaded file is not a PNG, JPEG or WebP image (its first bytes say so)."""

    def __init__(self, path: str | os.PathLike[str], reason: str, *, action: str = "use") -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"cannot {action} {self.path}: {reason}")


class DownloadTooLargeError(BadDownloadError):
    """A download went over the size cap (`--max-image-bytes`); it was stopped there
    and nothing of it is kept."""

    def __init__(self, where: str, limit: int) -> None:
        self.where = where
        self.limit = limit
        super().__init__(
            f"download {where}: larger than the {limit:,}-byte cap (--max-image-bytes)"
        )


class LedgerError(BatcherError):
    """The ledger database cannot be opened, migrated or written.

    `where` names the ledger: the SQLite file's path, or the URL with any
    password hidden.
    """

    def __init__(self, message: str, *, where: str | None = None) -> None:
        self.where = where
        super().__init__(message)


class LedgerBusyError(LedgerError):
    """Another process held the ledger's write lock for longer than the busy timeout.

    Exit 1: nothing is wrong with the ledger or the settings; try again later.
    """


class LedgerCorruptError(LedgerError):
    """The ledger file is not a SQLite database, or it is damaged (truncated, overwritten).

    Exit 2: it needs repair (or another --db) before anything can go on. Most
    damage shows on opening, before anything is sent; the file is left untouched.
    """

    exit_code = EXIT_INPUT


class LedgerReadOnlyError(LedgerError):
    """The ledger cannot be written: the file, or its folder (SQLite writes its
    -wal and -shm files beside it), is read-only. Exit 2, like any configuration error."""

    exit_code = EXIT_INPUT


class LedgerVersionError(LedgerError):
    """The ledger's schema is at a revision this batcher cannot migrate from: most
    often a newer batcher wrote it. Exit 2: nothing is changed."""

    exit_code = EXIT_INPUT


class LedgerLostError(LedgerError):
    """The ledger stayed unavailable past --ledger-hold, or its file was removed,
    replaced or truncated under the run. Sending stopped; every answer that had
    arrived is in the rescue file (batcher.ledger.rescue), which the next command
    that opens the ledger applies. Exit 1."""


class OutputError(BatcherError):
    """A file or folder of the batch's output (images, manifest, gallery) cannot be
    read or written: a full disk, a folder that went away.

    Raised by the code that writes there (batcher.run.files, the client's downloads)
    in place of the OSError, with the path it was writing and the system's reason.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str, *, action: str = "write") -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"cannot {action} {self.path}: {reason}")

    @classmethod
    def from_os_error(
        cls, path: str | os.PathLike[str], exc: OSError, *, action: str = "write"
    ) -> Self:
        """The OSError's reason as one line ("No space left on device"), without a traceback."""
        return cls(path, exc.strerror or type(exc).__name__, action=action)


class OutputFolderError(OutputError, InputError):
    """The output folder cannot be created or written: found before anything is sent (exit 2)."""


class ReviewError(InputError):
    """A review decision names no image of the batch, or a verdict that does not exist."""
