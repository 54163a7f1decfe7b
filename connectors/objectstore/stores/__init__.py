"""Where objects come from: an S3 bucket (:mod:`.s3`) or a local folder (:mod:`.local`)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from connectors.objectstore.settings import ObjectStoreSettings
from connectors.objectstore.stores.base import ObjectInfo, ObjectStore
from connectors.objectstore.stores.local import LocalStore
from connectors.objectstore.stores.s3 import S3Store
from crmstream.errors import ConfigError

__all__ = ["LocalStore", "ObjectInfo", "ObjectStore", "S3Store", "open_store"]


def open_store(config: ObjectStoreSettings) -> tuple[ObjectStore, str]:
    """The store and the key prefix that ``--source`` names."""
    url = urlparse(config.source)
    if url.scheme == "s3":
        prefix = url.path.lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return (
            S3Store(
                url.netloc,
                endpoint_url=config.endpoint_url,
                region=config.region,
                retry_mode=config.retry_mode,
                max_attempts=config.max_attempts,
            ),
            prefix,
        )
    root = Path(unquote(url.path))
    if not root.is_dir():
        raise ConfigError("--source", f"folder {root} does not exist")
    return LocalStore(root), ""
