"""Where the data directories (stages/, overlays/, firstboot/, clients/, examples/) are at run time.

In a wheel they sit inside the builder package; in a checkout (or an editable install) beside it.
"""

from functools import cache
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


@cache
def data_dir(name: str) -> Path:
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"pibuild's {name}/ directory is missing from the installation ({_PACKAGE})")


def stages_dir() -> Path:
    return data_dir("stages")


def overlays_dir() -> Path:
    return data_dir("overlays")


def firstboot_dir() -> Path:
    return data_dir("firstboot")


def clients_dir() -> Path:
    return data_dir("clients")


def example_config() -> Path:
    return data_dir("examples") / "cluster.yaml"


def seed_config() -> Path:
    """The bundled example with the seed's exact settings (what `lab drill --compare-seed` compares against)."""
    return data_dir("examples") / "seed.yaml"
