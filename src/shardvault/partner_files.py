"""The names of the partner's own files in its directory (``governance.partner_dir``).

The witness and the custodian keep their keys, their records and the heads they
cosigned there (docs/trust-model.md); the governance modules that keep each name
it from here, so the config can refuse a keyring named as one of them, which the
partner's side then read as its own (or the keyring as one of theirs).
"""

from __future__ import annotations

WITNESS_KEY = "witness.skey"  # cosigns heads (`governance.heads`)
CUSTODIAN_KEY = "custodian.skey"  # signs destroy attestations (`governance.attestations`)
VERDICTS = "verdicts.sqlite"  # the signed verdicts delivered (`governance.verdicts_file`)
SEEN = "seen"  # a directory: audit positions the custodian was shown (`governance.seen`)
COSIGNED = "cosigned"  # a directory: the last head cosigned per cell (`governance.heads`)

PARTNER_FILES = {
    WITNESS_KEY: "witness key",
    CUSTODIAN_KEY: "custodian's attestation key",
    VERDICTS: "record of signed verdicts",
    VERDICTS + "-journal": "record of signed verdicts' journal",
    SEEN: "record of the audit positions its custodian was shown",
    COSIGNED: "last cosigned heads",
}
"""Each name in the partner's directory, file or directory, with what it is."""

__all__ = ["COSIGNED", "CUSTODIAN_KEY", "PARTNER_FILES", "SEEN", "VERDICTS", "WITNESS_KEY"]
