"""Per-cell catalogs: subjects, object versions and manifests (port + adapters)."""

from shardvault.catalog.port import Catalog, SubjectRecord, VersionRecord, VersionState

__all__ = ["Catalog", "SubjectRecord", "VersionRecord", "VersionState"]
