"""A result store in a local directory (a run folder, a mounted volume, a copied store).

Names are ``/``-separated paths below the root. ``list`` matches a name prefix the way S3 does
(``records/0000`` matches ``records/000012-...``), sorted the same way, so readers cannot tell
the two kinds of store apart.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .storeerrors import ObjectNotFound, StoreError, check_name, check_prefix

__all__ = ["DirectoryStore"]

# put() writes a hidden temporary file first and renames it, so a reader sees whole files only.
_PARTIAL_SUFFIX = ".partial"


class DirectoryStore:
    """The store rooted at directory ``root`` (which need not exist before the first ``put``)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._url = os.fspath(root)

    @property
    def url(self) -> str:
        """The root as it was given."""
        return self._url

    def _path(self, name: str) -> Path:
        return self.root.joinpath(*check_name(name).split("/"))

    def list(self, prefix: str) -> Iterator[str]:
        """The names starting with ``prefix``, sorted; StoreError if the root is not a directory."""
        check_prefix(prefix)
        if not self.root.is_dir():
            raise StoreError(f"{self.url}: no such directory")
        # Walk only below the deepest directory the prefix names.
        folder = prefix.rpartition("/")[0]
        start = self.root.joinpath(*folder.split("/")) if folder else self.root
        names: list[str] = []
        errors: list[OSError] = []
        for directory, subdirectories, files in os.walk(start, onerror=errors.append):
            subdirectories.sort()
            relative = Path(directory).relative_to(self.root).as_posix()
            base = "" if relative == "." else relative + "/"
            for file in files:
                if file.startswith(".") and file.endswith(_PARTIAL_SUFFIX):
                    continue
                name = base + file
                if name.startswith(prefix) and os.path.isfile(os.path.join(directory, file)):
                    names.append(name)
        for error in errors:
            # A prefix naming no directory (or a file) matches no names.
            if not isinstance(error, FileNotFoundError | NotADirectoryError):
                raise StoreError(f"{self.url}: cannot list {error.filename}: {error.strerror}")
        names.sort()
        return iter(names)

    def open(self, name: str) -> BinaryIO:
        """The file for reading; ObjectNotFound if there is none."""
        path = self._path(name)
        try:
            return path.open("rb")
        except FileNotFoundError:
            raise ObjectNotFound(f"{self.url}: no file {name}") from None
        except IsADirectoryError:
            raise ObjectNotFound(f"{self.url}: {name} is a directory, not a file") from None

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def put(self, name: str, data: bytes) -> None:
        """Write the file whole (created or replaced at once, with its parent directories)."""
        path = self._path(name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(
                prefix=f".{path.name}.", suffix=_PARTIAL_SUFFIX, dir=path.parent
            )
        except OSError as error:
            raise StoreError(
                f"{self.url}: cannot write {name}: {error.strerror or error}"
            ) from None
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            os.chmod(temporary, 0o644)
            os.replace(temporary, path)
        except OSError as error:
            Path(temporary).unlink(missing_ok=True)
            raise StoreError(
                f"{self.url}: cannot write {name}: {error.strerror or error}"
            ) from None
