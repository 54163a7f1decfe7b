"""Files that crm-stream reads beside its code: the Avro schemas (``schemas/avro``) and the Tansu
dev profile (``config/tansu-dev.env``).

They live once, at those paths of the repository. A wheel carries a copy of each inside this
package, under ``crmstream/_shipped/`` with the same relative paths (``setup.py`` copies them at
build time), so an installed ``crm-stream demo`` finds them without a checkout; a source checkout
or an editable install reads the repository's own files.
"""

from __future__ import annotations

from pathlib import Path

from crmstream.errors import CrmStreamError

PACKAGE = Path(__file__).resolve().parent
# Where a wheel puts the copies (setup.py: SHIPPED), and where a checkout keeps the originals.
SHIPPED = PACKAGE / "_shipped"
CHECKOUT = PACKAGE.parent

SCHEMAS = "schemas/avro"
TANSU_DEV_PROFILE = "config/tansu-dev.env"


def shipped_path(relative: str) -> Path:
    """The installed copy of a repository file (a wheel), else the repository's own."""
    for root in (SHIPPED, CHECKOUT):
        path = root / relative
        if path.exists():
            return path
    raise CrmStreamError(
        f"{relative} is neither in {SHIPPED} (a wheel) nor in {CHECKOUT} (a source checkout); "
        "reinstall crm-stream"
    )


def read_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines of a dotenv-style file; blank lines and ``#`` comments ignored."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def tansu_dev_profile() -> dict[str, str]:
    """The ``CRM_*`` settings that work around the embedded broker (``config/tansu-dev.env``):
    for the demo, the tests and the benchmark only, never for a real Kafka cluster."""
    return read_env_file(shipped_path(TANSU_DEV_PROFILE))
