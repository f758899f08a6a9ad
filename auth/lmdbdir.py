"""Open a small LMDB environment in a directory of its own (auth's persistent state)."""

from __future__ import annotations

from pathlib import Path

import lmdb


def open_env_dir(path: Path, map_size: int, max_dbs: int, what: str,
                 error: type[Exception]) -> lmdb.Environment:
    """The environment at directory `path` (created if missing).

    Raises:
        error: naming `what`, the path, the map size and the cause, when it can't be made or opened.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
        return lmdb.open(str(path), map_size=map_size, max_dbs=max_dbs, subdir=True)
    except (OSError, lmdb.Error) as e:
        raise error(f"cannot open {what} at {path} (map size {map_size}): {e}") from None
