"""The package's public names are pinned: changing them is a deliberate, visible act."""

from __future__ import annotations

import subprocess
import sys

import shardvault


def test_public_names_are_pinned() -> None:
    assert sorted(shardvault.__all__) == [
        "ObjectInfo",
        "ObjectRef",
        "RequestContext",
        "ShardvaultError",
        "Vault",
        "__version__",
        "load_config",
    ]
    for name in shardvault.__all__:
        assert getattr(shardvault, name) is not None


def test_exports_are_the_real_objects() -> None:
    from shardvault.config import load
    from shardvault.vault import Vault

    assert shardvault.Vault is Vault
    assert shardvault.load_config is load


def test_importing_the_package_loads_no_crypto_or_erasure_code() -> None:
    probe = "import shardvault, sys; print('pyeclib' in sys.modules, 'cryptography' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]
