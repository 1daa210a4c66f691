"""`shardvault init --demo DIR`: a three-cell deployment on one machine."""

from __future__ import annotations

from pathlib import Path

from shardvault.errors import InvalidInput

DEMO_JURISDICTIONS = {"US": "United States", "SG": "Singapore", "EU": "European Union"}
DEMO_TENANTS = {"intl": "International social app", "domestic": "Domestic social app"}
NODES_PER_CELL = 6
FACILITIES_PER_CELL = 3


def demo_config_text() -> str:
    lines = [
        "# shardvault demo deployment: three cells, six local-directory nodes each.",
        "version = 1",
        "",
        "[storage]",
        'state_dir = "state"',
        "segment_size = 1048576",
        "k = 4",
        "m = 2",
        "",
        "[custodian]",
        'backend = "keyring"',
        'path = "keys/keyring.json"',
        "",
    ]
    for code, name in DEMO_JURISDICTIONS.items():
        lines += [f"[jurisdictions.{code}]", f'name = "{name}"', ""]
    for tenant, name in DEMO_TENANTS.items():
        lines += [f"[tenants.{tenant}]", f'name = "{name}"', ""]
    for code in DEMO_JURISDICTIONS:
        for number in range(1, NODES_PER_CELL + 1):
            node = f"{code.lower()}-n{number}"
            facility = f"{code.lower()}-fac-{(number - 1) % FACILITIES_PER_CELL + 1}"
            lines += [
                "[[nodes]]",
                f'id = "{node}"',
                f'jurisdiction = "{code}"',
                f'facility = "{facility}"',
                'backend = "local"',
                f'path = "nodes/{code}/{node}"',
                "",
            ]
    return "\n".join(lines)


def write_demo(directory: Path) -> Path:
    """Write DIR/shardvault.toml and create the node directories; refuse to overwrite."""
    config_path = directory / "shardvault.toml"
    if config_path.exists():
        raise InvalidInput(f"{config_path} already exists: choose an empty directory")
    directory.mkdir(parents=True, exist_ok=True)
    for code in DEMO_JURISDICTIONS:
        for number in range(1, NODES_PER_CELL + 1):
            (directory / "nodes" / code / f"{code.lower()}-n{number}").mkdir(
                parents=True, exist_ok=True
            )
    temp = config_path.with_suffix(".toml.tmp")
    temp.write_text(demo_config_text())
    temp.replace(config_path)
    return config_path
