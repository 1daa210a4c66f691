"""The Vault: register subjects, put, get, list, delete, forget, where, gc.

Every call carries a RequestContext (none means the local administrator). The
governance guard decides it and audits the decision durably before anything
happens; every use of a subject key then goes to the custodian with the
justification of the allowed access, and a custodian refusal is audited too.
Put and get do the work nobody can observe first (writing the shards of a
version not yet committed, reading and verifying shards) and wait for the entry
before the custodian sees the request and before anything is committed or
returned.
A write reserves a pending version, writes and commits every shard, then
commits the manifest in one catalog transaction, so a crash at any point leaves
the old version or the new one, never a mix. A one-segment put in memory skips
the reservation and inserts its committed row in that one transaction
(`writing._write_unreserved`).

This module opens and closes the vault and answers the short calls; each longer
job is a module of free functions taking the vault: `access` (the decision, the
audit and the subject key every call goes through), `registration`, `writing`,
`reading`, `forgetting` and `forget_collection`. Vault binds put, register_subject
and forget straight to theirs (a class attribute, not a method calling them), so
a put goes through no call more than before.
"""

from __future__ import annotations

import builtins
import contextlib
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import replace

from shardvault.allocator import tune_allocator
from shardvault.catalog.port import Catalog, DamageRecord, SubjectRecord
from shardvault.codec.erasure import ErasureCode
from shardvault.config import Config
from shardvault.directory import SubjectDirectory
from shardvault.errors import IntegrityError, InvalidInput, NotFound, VaultClosed
from shardvault.governance.layer import Governance
from shardvault.io_threads import IoThreads
from shardvault.keys.port import KeyCustodian
from shardvault.manifest import Manifest
from shardvault.model import (
    ObjectInfo,
    ObjectRef,
    RequestContext,
    ShardLocation,
    local_context,
    nfc_text,
    shown,
)
from shardvault.policy import Action
from shardvault.vault import forgetting, registration, writing
from shardvault.vault.access import (
    AnsweredAfterAudit,
    at_home,
    authorized,
    check_if_match,
    check_version,
    home_of,
    registered,
    whole,
)
from shardvault.vault.bounded import BoundedStores
from shardvault.vault.cells import (
    CatalogFactory,
    Cell,
    name_earlier_keys,
    open_cells,
    open_custodian,
    sqlite_catalogs,
)
from shardvault.vault.close_once import CloseOnce
from shardvault.vault.deadline import NodeDeadline
from shardvault.vault.gc import GcReport, collect_cell
from shardvault.vault.object_stream import ObjectStream
from shardvault.vault.reader import ObjectReader
from shardvault.vault.reading import authorized_version, manifest_of, open_reader
from shardvault.vault.repair import DryRun, RepairReport, repair_cell
from shardvault.vault.spread import spread_cell
from shardvault.vault.views import (
    CellCrowding,
    ListPage,
    NodeUsage,
    cell_crowding,
    info_of,
    node_usage,
)
from shardvault.vault.writer import StepHook, no_step

MAX_LIST_LIMIT = 10_000
UNKNOWN = "unknown"  # the facility of a node the config no longer lists


def _refuse_lost_directory(directory: SubjectDirectory, cells: dict[str, Cell]) -> None:
    """A directory with no home while a cell holds subjects was lost (or replaced by a
    blank one): every subject would read as unregistered, and could be registered again
    in another jurisdiction, its data left behind in the first. Every subject a catalog
    holds has its home in the directory (a home goes only with nothing behind it), made
    before the cell's row: a cell found holding one while the directory was found empty
    before is a registration by another process meanwhile once the directory has a home
    now (a process opening the vault as the deployment's first subject was registered
    refused to open)."""
    if not directory.empty():
        return
    for code, cell in cells.items():
        if cell.catalog.holds_subjects() and directory.empty():
            raise IntegrityError(
                f"subject directory {directory.location} holds no home, though cell {code} "
                "holds subjects: restore it (with its -wal file) from a backup; a blank one "
                "would let each subject be registered again in another jurisdiction"
            )


class Vault:
    """The embedded vault over a deployment's cells.

    Thread-safe. Several processes may open one deployment at once. Fork
    workers while no vault is open in the parent (or start them with
    'spawn'/'forkserver'), and open the vault in each: SQLite's locks do not
    survive a fork, so a process forked from an open vault refuses to open one
    (`shardvault.sqlite_connections`).
    """

    def __init__(
        self,
        config: Config,
        *,
        cells: dict[str, Cell],
        custodian: KeyCustodian,
        directory: SubjectDirectory,
        clock: Callable[[], float] = time.time,
        on_step: StepHook = no_step,
        governance: Governance | None = None,
    ) -> None:
        tune_allocator()
        self.config = config
        self.cells = cells
        self.custodian = custodian
        self.directory = directory
        self._owns_governance = governance is None
        self._owns_custodian = False  # one `open` opened is closed with the vault
        self.governance = governance or Governance.open(config, clock)
        self.code = ErasureCode(config.k, config.m)
        self._clock = clock
        self._on_step = on_step
        # shard I/O threads: none waits behind one a hung disk holds (vault/deadline.py)
        self._pool = IoThreads("shardvault-io", shut=_closed)  # (a reader, a put racing close)
        self.deadline = NodeDeadline(config.node_timeout, list(cells.values()))
        # a close racing another waits what the first may take by the first's own bounds:
        # the I/O threads' tasks, each a node call given up on after the nodes' deadline;
        # the stores' closes, one deadline together; then the calls into its own disks
        # (catalogs, directory, audit logs), each given up on by a command after
        # state_timeout (cli/watchdog.py)
        self._close_once = CloseOnce(
            self._close_parts,
            2 * config.node_timeout + config.state_timeout,
            self.deadline.close_given_up,
        )

    @classmethod
    def open(
        cls,
        config: Config,
        *,
        catalogs: CatalogFactory | None = None,
        custodian: KeyCustodian | None = None,
        clock: Callable[[], float] = time.time,
        on_step: StepHook = no_step,
        governance: Governance | None = None,
    ) -> Vault:
        """Open every cell; the custodian's gate is the partner's custodian policy."""
        owned = governance is None
        governance = governance or Governance.open(config, clock)
        opened_custodian: KeyCustodian | None = None
        opened: list[Callable[[], None]] = []  # closed again if the open fails
        try:
            directory = SubjectDirectory.open(config.state_dir)
            opened.append(directory.close)
            # a lost catalog is not made anew where the directory homes subjects
            catalogs = catalogs or sqlite_catalogs(
                config.state_dir, lambda cell: not directory.homes_in(cell)
            )
            cells = open_cells(config, catalogs)
            opened.extend(cell.close for cell in cells.values())
            _refuse_lost_directory(directory, cells)
            # a keyring is made only for a deployment with no subject yet: one that has
            # some lost its keyring, and a new one would bring destroyed keys back
            if custodian is None:
                custodian = opened_custodian = open_custodian(
                    config, gate=governance.custodian_gate(), may_create=directory.empty,
                    signer=governance.custodian_key,
                )  # fmt: skip
            name_earlier_keys(custodian, cells)
            vault = cls(
                config,
                cells=cells,
                custodian=custodian,
                directory=directory,
                clock=clock,
                on_step=on_step,
                governance=governance,
            )
        except BaseException:
            # a host that retries (a keyring being restored) must not hold a directory
            # and catalogs more each time; the open's own error is the one raised
            if opened_custodian is not None:
                opened.append(opened_custodian.close)
            if owned:
                opened.append(governance.close)
            for close in reversed(opened):
                with contextlib.suppress(Exception):
                    close()
            raise
        vault._owns_governance = owned
        vault._owns_custodian = opened_custodian is not None
        return vault

    def close(self) -> None:
        """Close every store and catalog, and the keyring `open` opened (a custodian given
        is the caller's), now: a process that opens many vaults holds no file of one it
        closed but the descriptor each filesystem is synced through (`filesystem_sync`).
        Threads stuck on a node that hung, or opening a catalog whose disk hangs, are not
        waited for (nor is the store closed under them): the process's exit ends them.
        One stuck on a disk no request has seen hang yet is waited for `node_timeout`
        at most; its store is then closed under it, and its failure is the close's.
        Nor is a store's close past the nodes' deadline: its node is named in
        `deadline.hint_notices()` (`NodeDeadline.close_stores`).

        Once (vault/close_once.py): a close called while another is under way (on another
        thread) waits for it and raises what it raised, anew; past what the first may
        take by its own bounds (twice `node_timeout`, then `state_timeout`), it returns,
        and `deadline.hint_notices()` says the first was left to its thread. A close
        after one that ended does nothing; after one a signal ended, it finishes it.
        One called within the close, as a signal handler's may be, returns at once:
        waiting, it would wait for itself."""
        self._close_once()

    def _close_parts(self) -> None:
        self.deadline.close()
        # a task stuck on a disk not yet seen hung is waited for a deadline, no more:
        # the store is then closed under it, and its failure is the close's (VaultClosed)
        self._pool.shutdown(wait=not self.deadline.any_hung(), timeout=self.deadline.seconds)
        # each part closes though one before it failed (its error is raised after): an
        # exit stack calls the last pushed first, so they are pushed in reverse order
        with contextlib.ExitStack() as closing:
            if self._owns_governance:
                closing.callback(self.governance.close)
            if self._owns_custodian:
                closing.callback(self.custodian.close)
            closing.callback(self.directory.close)
            # every cell's stores start closing, then are waited for until one common end
            closing.enter_context(self.deadline.closing_together())
            for cell in reversed(self.cells.values()):
                closing.callback(cell.close)  # only what a request opened

    def __enter__(self) -> Vault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _every_cell(self) -> builtins.list[Cell]:
        """Every cell, each catalog opened: what needs every cell's catalog (gc, repair,
        crowding) refuses before it does anything if one cannot be opened, naming it. A
        forget needs none but its home's (other cells' approvals are no catalog's)."""
        for cell in self.cells.values():
            _ = cell.catalog
        return builtins.list(self.cells.values())

    # subjects -----------------------------------------------------------------

    register_subject = registration.register_subject  # vault/registration.py

    def subject(self, tenant: str, subject: str) -> SubjectRecord:
        """The subject's record, for the embedding program itself: undecided and unaudited,
        so never reachable with a caller's request context (the CLI does not offer it)."""
        home = home_of(self, tenant, subject)
        record = self.cells[home].catalog.get_subject(tenant, subject)
        return at_home(registered(record, tenant, subject), home)

    # writes -------------------------------------------------------------------

    put = writing.put  # vault/writing.py: no delegating call on the put path

    def delete(
        self,
        ref: ObjectRef,
        version: int | None = None,
        ctx: RequestContext | None = None,
        *,
        if_match: int | None = None,
    ) -> int:
        """Mark the object (or one version) deleted; gc removes the shards.

        With ``if_match`` N the whole object is deleted only if N is its current
        version (Conflict otherwise, nothing deleted): a delete that a write made
        since the caller read cannot take. Not with ``version``, which names what it
        deletes already.
        """
        ctx = ctx or local_context()
        check_version(version)
        check_if_match(if_match, deleting=True)
        if if_match is not None and version is not None:
            raise InvalidInput(
                "--if-match deletes the whole object if N is its current version; "
                "--version deletes that version: give one or the other"
            )
        subject, _ = authorized(self, ctx, Action.DELETE, ref.tenant, ref.subject, ref.key)
        catalog = self.cells[subject.jurisdiction].catalog
        marked = catalog.mark_deleted(ref, version, if_match)
        if not marked:
            what = f"{ref} v{version}" if version else str(ref)
            raise NotFound(f"no object {what}")
        return marked

    forget = forgetting.forget  # vault/forgetting.py, with its receipt

    # reads --------------------------------------------------------------------

    def stat(
        self, ref: ObjectRef, version: int | None = None, ctx: RequestContext | None = None
    ) -> ObjectInfo:
        _, _, record, _ = authorized_version(
            self, ref, version, ctx or local_context(), Action.STAT
        )
        return info_of(manifest_of(record))

    def open_read(
        self, ref: ObjectRef, version: int | None = None, ctx: RequestContext | None = None
    ) -> ObjectStream:
        """A streaming reader: iterate it for plaintext segments, or read it as a binary
        file (read(n), readinto, readline); then check .damage."""
        return ObjectStream(self._open_reader(ref, version, ctx))

    def _open_reader(
        self, ref: ObjectRef, version: int | None, ctx: RequestContext | None
    ) -> ObjectReader:
        ctx = ctx or local_context("read")
        cell, subject, record, access = authorized_version(
            self, ref, version, ctx, Action.READ, durable=False
        )
        with AnsweredAfterAudit(access):
            return open_reader(self, ref, cell, subject, record, access)

    def get(
        self, ref: ObjectRef, version: int | None = None, ctx: RequestContext | None = None
    ) -> bytes:
        with self._open_reader(ref, version, ctx) as reader:  # no file wrapper: not needed
            data = reader.read_all()
        self.report_damage(reader.damage)
        return data

    def report_damage(self, damage: list[DamageRecord]) -> builtins.list[DamageRecord]:
        """Queue damaged shards found by a read for repair; the records queued.

        A version no longer committed was deleted (or forgotten) since the read looked
        it up, and what it read around was gc taking its shards: gone, not damaged, so
        not queued (repair would drop it) nor worth a warning. Asked only of damage,
        once a version: a large object read around one bad node has a record a segment.
        """
        catalogs: dict[tuple[ObjectRef, int], Catalog | None] = {}
        queued = []
        for item in damage:
            where = (item.ref, item.version)
            if where not in catalogs:
                catalogs[where] = self._catalog_holding(item.ref, item.version)
            catalog = catalogs[where]
            if catalog is not None:
                catalog.record_damage(item)
                queued.append(item)
        return queued

    def _catalog_holding(self, ref: ObjectRef, version: int) -> Catalog | None:
        """The home cell's catalog, if the version is still committed there."""
        home = self.directory.home(ref.tenant, ref.subject)
        if home is None:
            return None
        catalog = self.cells[home].catalog
        return catalog if catalog.get_version(ref, version) is not None else None

    def list(
        self,
        tenant: str,
        subject: str,
        *,
        prefix: str = "",
        start_after: str = "",
        limit: int = 1000,
        ctx: RequestContext | None = None,
    ) -> ListPage:
        if not (whole(limit) and 1 <= limit <= MAX_LIST_LIMIT):
            raise InvalidInput(
                f"limit must be a whole number between 1 and {MAX_LIST_LIMIT}, not {limit!r}"
            )
        for what, text in (("prefix", prefix), ("start-after key", start_after)):
            if not isinstance(text, str):
                raise InvalidInput(f"{what} must be text (str), not {type(text).__name__}")
            if not text.isascii():  # lone surrogates (undecodable argv bytes) cannot be stored
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    raise InvalidInput(
                        f"invalid {what} {shown(text)}: not valid UTF-8 text"
                    ) from None
            # no stored key is other than NFC: a prefix that is would match none, silently
            nfc_text(text, what)
        record, _ = authorized(self, ctx or local_context(), Action.LIST, tenant, subject)
        rows = self.cells[record.jurisdiction].catalog.list_latest(
            tenant, subject, prefix, start_after, limit + 1
        )
        items = [info_of(Manifest.from_bytes(row.manifest)) for row in rows[:limit] if row.manifest]
        return ListPage(items, items[-1].ref.key if len(rows) > limit else None)

    def iter_objects(
        self, tenant: str, subject: str, prefix: str = "", ctx: RequestContext | None = None
    ) -> Iterator[ObjectInfo]:
        after = ""
        while True:
            page = self.list(tenant, subject, prefix=prefix, start_after=after, ctx=ctx)
            yield from page.items
            if page.next_after is None:
                return
            after = page.next_after

    def versions(
        self, ref: ObjectRef, ctx: RequestContext | None = None
    ) -> builtins.list[ObjectInfo]:
        ctx = ctx or local_context()
        subject, _ = authorized(self, ctx, Action.STAT, ref.tenant, ref.subject, ref.key)
        rows = self.cells[subject.jurisdiction].catalog.list_versions(ref)
        if not rows:
            raise NotFound(f"no object {ref}")
        return [info_of(Manifest.from_bytes(row.manifest)) for row in rows if row.manifest]

    def where(
        self, ref: ObjectRef, version: int | None = None, ctx: RequestContext | None = None
    ) -> builtins.list[ShardLocation]:
        """Every shard of the version: segment, index, node, jurisdiction, facility."""
        cell, _, record, _ = authorized_version(
            self, ref, version, ctx or local_context(), Action.STAT
        )
        manifest = manifest_of(record)
        facilities = {node.id: node.facility for node in cell.nodes}
        return [  # a node the config no longer lists was still one of this cell's
            ShardLocation(
                segment,
                index,
                node_id,
                cell.jurisdiction,
                facilities.get(node_id, UNKNOWN),
                in_config=node_id in facilities,
            )
            for segment in range(manifest.segments)
            for index, node_id in enumerate(manifest.nodes)
        ]

    # operations ---------------------------------------------------------------

    def gc(self, grace_seconds: float = 3600.0) -> GcReport:
        """Collect deleted and abandoned versions, orphan shards and stale temporaries."""
        if not (isinstance(grace_seconds, int | float) and grace_seconds >= 0):
            raise InvalidInput(f"gc grace must be zero or more seconds, not {grace_seconds!r}")
        started = self._clock()
        report = GcReport()
        cutoff = started - grace_seconds
        with BoundedStores(self.deadline) as bounded:  # a hung node is skipped, not waited for
            for cell in self._every_cell():
                report = report + collect_cell(bounded.cell(cell), cutoff, started, self.code.n)
        self.governance.settle_owed_scrubs()  # what forgets and registrations left owed
        return report

    def repair(self, scrub: bool = False, dry_run: bool = False) -> RepairReport:
        """Rebuild the shards reads found damaged (with ``scrub``: every shard found bad
        or on a node that is not active) on other nodes of their cells; then move shards
        so no facility holds more than m of a stripe where the cell allows, the stripes
        found so from their manifests alone (vault/spread.py). ``dry_run``: write
        nothing, say what would be done."""
        report = RepairReport(dry_run=dry_run)
        with BoundedStores(self.deadline) as bounded:  # a hung node's shards are bad
            for cell in self._every_cell():
                run = bounded.cell(cell)  # one view: a node lost in the rebuilds stays so
                dry = DryRun() if dry_run else None
                rebuilt = repair_cell(run, self.code, scrub, self._on_step, dry, self._clock)
                report = report + rebuilt
                report = report + spread_cell(run, scrub, self._on_step, dry, self._clock)
            hung = bounded.hung()  # unavailable to the run too: named once, as hung
            unavailable = tuple(node for node in report.unavailable_nodes if node not in hung)
            return replace(report, hung_nodes=hung, unavailable_nodes=unavailable)

    def node_usage(self) -> builtins.list[NodeUsage]:
        with BoundedStores(self.deadline) as bounded:  # a hung node shows so
            return node_usage(self.cells.values(), bounded)  # no catalog needed

    def crowding(self, unreachable: Collection[str] = ()) -> builtins.list[CellCrowding]:
        """Per cell, how many committed versions hold more than m shards in one facility,
        and how many of those its active nodes (but UNREACHABLE ones) could spread now:
        from the manifests and the config alone, no shard read (`repair` spreads them)."""
        return [cell_crowding(cell, frozenset(unreachable)) for cell in self._every_cell()]


def _closed() -> VaultClosed:
    """What a reader still iterated, or a put racing the close, gets from the I/O threads."""
    return VaultClosed("the vault was closed: open it again to read or write")
