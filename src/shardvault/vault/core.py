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
(`_write_unreserved`).
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import math
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import replace
from typing import BinaryIO, TypeVar

from shardvault.allocator import tune_allocator
from shardvault.catalog.port import DamageRecord, SubjectRecord, VersionRecord, VersionState
from shardvault.codec.erasure import ErasureCode
from shardvault.codec.segment import SegmentBinding, SegmentCipher
from shardvault.config import Config
from shardvault.directory import SubjectDirectory
from shardvault.errors import (
    AccessDenied,
    ApprovalRequired,
    AuditUnavailable,
    Conflict,
    IntegrityError,
    InvalidInput,
    NotFound,
    ShardvaultError,
    SubjectForgotten,
    TooFewNodes,
    WriteRaced,
)
from shardvault.governance.attestations import open_attestation
from shardvault.governance.guard import Access
from shardvault.governance.layer import Governance
from shardvault.governance.receipts import (
    Forgotten,
    attestation_digest,
    make_receipt,
    receipt_nonce,
    subject_commitment,
)
from shardvault.io_threads import IoThreads
from shardvault.keys import hierarchy
from shardvault.keys.attestation import utc_seconds
from shardvault.keys.port import KeyCustodian, KeyScope
from shardvault.manifest import Manifest
from shardvault.model import (
    Justification,
    NodeSpec,
    ObjectInfo,
    ObjectRef,
    RequestContext,
    ShardLocation,
    jurisdiction_code,
    local_context,
    new_object_key,
    nfc_text,
    shown,
    subject_id,
)
from shardvault.nodes.port import ShardStore
from shardvault.objectid import minted_at, new_object_id
from shardvault.placement import place_stripe, placement_seed
from shardvault.policy import Action
from shardvault.vault.bounded import BoundedStores
from shardvault.vault.cells import (
    CatalogFactory,
    Cell,
    name_earlier_keys,
    open_cells,
    open_custodian,
    sqlite_catalogs,
)
from shardvault.vault.deadline import NodeDeadline
from shardvault.vault.gc import GcReport, collect_cell, collect_claimed
from shardvault.vault.reader import ObjectReader
from shardvault.vault.repair import DryRun, RepairReport, repair_cell
from shardvault.vault.spread import spread_cell
from shardvault.vault.views import (
    CellCrowding,
    ForgetResult,
    ListPage,
    NodeUsage,
    cell_crowding,
    info_of,
    node_usage,
)
from shardvault.vault.writer import Progress, ShardSetWriter, StepHook

MAX_LIST_LIMIT = 10_000
MAX_VERSION = 2**63 - 1
UNKNOWN = "unknown"  # the facility of a node the config no longer lists
_UNRESERVED_TRIES = 3  # a small put losing this many races in a row takes a reservation
_T = TypeVar("_T")


def _no_step(step: str) -> None:
    return None


def _refuse_lost_directory(directory: SubjectDirectory, cells: dict[str, Cell]) -> None:
    """A directory with no home while a cell holds subjects was lost (or replaced by a
    blank one): every subject would read as unregistered, and could be registered again
    in another jurisdiction, its data left behind in the first. Every subject a catalog
    holds has its home in the directory (a home goes only with nothing behind it)."""
    if not directory.empty():
        return
    for code, cell in cells.items():
        if cell.catalog.holds_subjects():
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
        on_step: StepHook = _no_step,
        governance: Governance | None = None,
    ) -> None:
        tune_allocator()
        self.config = config
        self.cells = cells
        self.custodian = custodian
        self.directory = directory
        self._owns_governance = governance is None
        self.governance = governance or Governance.open(config, clock)
        self.code = ErasureCode(config.k, config.m)
        self._clock = clock
        self._on_step = on_step
        # shard I/O threads: none waits behind one a hung disk holds (vault/deadline.py)
        self._pool = IoThreads("shardvault-io")
        self.deadline = NodeDeadline(config.node_timeout, list(cells.values()))

    @classmethod
    def open(
        cls,
        config: Config,
        *,
        catalogs: CatalogFactory | None = None,
        custodian: KeyCustodian | None = None,
        clock: Callable[[], float] = time.time,
        on_step: StepHook = _no_step,
        governance: Governance | None = None,
    ) -> Vault:
        """Open every cell; the custodian's gate is the partner's custodian policy."""
        owned = governance is None
        governance = governance or Governance.open(config, clock)
        try:
            directory = SubjectDirectory.open(config.state_dir)
            # a lost catalog is not made anew where the directory homes subjects
            catalogs = catalogs or sqlite_catalogs(
                config.state_dir, lambda cell: not directory.homes_in(cell)
            )
            cells = open_cells(config, catalogs)
            _refuse_lost_directory(directory, cells)
            # a keyring is made only for a deployment with no subject yet: one that has
            # some lost its keyring, and a new one would bring destroyed keys back
            custodian = custodian or open_custodian(
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
            if owned:
                governance.close()
            raise
        vault._owns_governance = owned
        return vault

    def close(self) -> None:
        """Close every store and catalog. Threads stuck on a node that hung, or opening a
        catalog whose disk hangs, are not waited for (nor is the store closed under
        them): the process's exit ends them."""
        self.deadline.close()
        self._pool.shutdown(wait=not self.deadline.any_hung())
        for cell in self.cells.values():
            cell.opening.close()  # only a catalog a request opened
            cell.node_opening.close()  # only the stores of a cell a request needed
        self.directory.close()
        if self._owns_governance:
            self.governance.close()

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

    def register_subject(
        self, tenant: str, subject: str, jurisdiction: str, ctx: RequestContext | None = None
    ) -> SubjectRecord:
        """Give a subject a home jurisdiction and a fresh subject key.

        The custodian wraps the key before anything is recorded: if it refuses
        (audited), the subject is in neither the directory nor the catalog. It is
        decided as the action ``register``, not as a write: an approval of it lets
        no put of the subject's objects through (docs/policy.md).
        """
        ctx = ctx or local_context("register-subject")
        spec = self.config.tenant(tenant)
        subject_id(subject)
        self.config.jurisdiction(jurisdiction_code(jurisdiction))
        if not spec.allows(jurisdiction):
            raise InvalidInput(
                f"tenant {tenant} does not keep users in {jurisdiction} "
                f"(it allows {', '.join(spec.jurisdictions or ())})"
            )
        # opened before the directory homes the id there: a catalog missing where the
        # directory homes a subject is a lost one, and refused (`sqlite_catalogs`)
        catalog = self.cells[jurisdiction].catalog
        access = self._registration_decided(ctx, tenant, subject, jurisdiction)
        key_id = hierarchy.new_key_id()
        scope, key = KeyScope(tenant, jurisdiction), hierarchy.new_key()
        wrapped = self._key_use(
            access, lambda why: self.custodian.wrap(scope, key_id, key, why, subject=subject)
        )
        record = SubjectRecord(tenant, subject, jurisdiction, key_id, wrapped, self._clock())
        with self.directory.registration():
            self._drop_unfinished_registration(tenant, subject)
            try:
                self.directory.add(tenant, subject, jurisdiction)
            except Conflict as taken:
                self._refuse_if_forgotten(tenant, subject)
                raise taken
            try:
                # the id is now this home's alone: no other cell keeps it in an approval
                # (one that does not answer is left owing it, recorded first)
                owed = self.governance.owe_scrubs(jurisdiction, tenant, subject)
                self.governance.subject_homed(jurisdiction, tenant, subject, owed=owed)
                catalog.add_subject(record)
            except BaseException:
                # not if the row was committed before the failure: a home whose cell holds
                # the subject is never removed (other processes answer it from memory);
                # one the catalog cannot vouch for stays for the next registration to drop
                with contextlib.suppress(ShardvaultError):
                    self._drop_unfinished_registration(tenant, subject)
                raise
        return record

    def _registration_decided(
        self, ctx: RequestContext, tenant: str, subject: str, jurisdiction: str
    ) -> Access:
        """The registration decided and audited in the id's home if it has one, where an
        approval it asks lives (with pseudonyms at once for a forgotten id: `_decided`),
        and then refused, with no key wrapped; else in JURISDICTION, the home it asks for.

        Decided in JURISDICTION whatever the directory said, an approval named a user in
        clear in a cell outside their home, and no registration followed to take the name
        out. A home with no subject behind it (a registration killed between its two
        writes) is dropped, and the registration decided again where it asks."""
        home = self.directory.home(tenant, subject)
        if home is not None:
            access = self._decided(ctx, Action.REGISTER, tenant, home, subject)
            with self.directory.registration():
                self._drop_unfinished_registration(tenant, subject)
                if self.directory.home(tenant, subject) is not None:
                    self._refuse_if_forgotten(tenant, subject)
                    raise Conflict(f"subject {subject} of tenant {tenant} is already registered")
            if home == jurisdiction:
                return access
        with self._homed_meanwhile(ctx, Action.REGISTER, tenant, subject):
            return self.governance.guard.authorize(
                ctx, Action.REGISTER, tenant, jurisdiction, subject
            )

    @contextlib.contextmanager
    def _homed_meanwhile(
        self, ctx: RequestContext, action: Action, tenant: str, subject: str
    ) -> Iterator[None]:
        """Around a decision for an id the directory had no home for: an approval it asks
        is booked outside the home a registration may have given the id meanwhile, after
        that registration took the id out of other cells' approvals, so the directory is
        read again once it is booked (`SubjectScrubs.subject_homed`). Either this read sees
        the home, or that registration's pass comes after the booking and sees it. If
        this read marked the approval homed elsewhere, its requester is refused saying
        so, not told to have it signed (`Guard.refuse_if_homed_elsewhere`)."""
        try:
            yield
        except ApprovalRequired as asked:
            home = self.directory.home(tenant, subject)
            if home is not None:
                self.governance.subject_homed(home, tenant, subject)
                self.governance.refuse_if_homed_elsewhere(ctx, action, asked)
            raise

    def _refuse_if_forgotten(self, tenant: str, subject: str) -> None:
        """A forgotten subject's id stays taken: say so, not "already registered"."""
        home = self.directory.home(tenant, subject)
        cell = self.cells.get(home) if home is not None else None
        found = cell.catalog.get_subject(tenant, subject) if cell is not None else None
        if found is not None and found.forgotten_at is not None:
            raise Conflict(
                f"subject {subject} of tenant {tenant} was forgotten on {_forgotten_on(found)}; "
                "its id cannot be registered again: give the user a new one"
            )

    def _drop_unfinished_registration(self, tenant: str, subject: str) -> None:
        """A registration killed between its directory row and its cell's row left a home
        with nothing behind it: no put or read could use it, and the id could never be
        registered again. Holding the registration turn, such a row is that, not one
        another registration is about to complete: it goes."""
        home = self.directory.home(tenant, subject)
        cell = self.cells.get(home) if home is not None else None
        if cell is not None and cell.catalog.get_subject(tenant, subject) is None:
            self.directory.remove(tenant, subject)

    def subject(self, tenant: str, subject: str) -> SubjectRecord:
        """The subject's record, for the embedding program itself: undecided and unaudited,
        so never reachable with a caller's request context (the CLI does not offer it)."""
        home = self._home(tenant, subject)
        record = self.cells[home].catalog.get_subject(tenant, subject)
        return _at_home(_registered(record, tenant, subject), home)

    def _home(
        self,
        tenant: str,
        subject: str,
        ctx: RequestContext | None = None,
        action: Action = Action.STAT,
        key: str | None = None,
    ) -> str:
        """The subject's home jurisdiction, from the directory (`NotFound` if unregistered).

        With a request context, "not registered" is said only to a principal the
        policy would let act on the subject somewhere; anyone else gets, audited,
        the refusal a registered subject would give them.
        """
        spec = self.config.tenant(tenant)
        subject_id(subject)
        home = self.directory.home(tenant, subject)
        if home is None and ctx is not None:
            where = list(spec.jurisdictions or self.config.jurisdictions)
            with self._homed_meanwhile(ctx, action, tenant, subject):
                self.governance.check_unregistered(ctx, action, tenant, where, subject, key)
        return _registered(home, tenant, subject)

    def _authorized(
        self,
        ctx: RequestContext,
        action: Action,
        tenant: str,
        subject: str,
        key: str | None = None,
        *,
        durable: bool = True,
    ) -> tuple[SubjectRecord, Access]:
        """Decide and audit the access in the subject's home cell, then check it is live.

        The cell is asked only after the decision: the decision's entry waits in
        the audit queue meanwhile, so more entries share each audit write (reads
        do the same in `_record`: docs/performance.md).
        """
        home = self._home(tenant, subject, ctx, action, key)
        access = self._decided(ctx, action, tenant, home, subject, key, durable=durable)
        with _AnsweredAfterAudit(access):  # a subject missing or forgotten is an answer
            record = self.cells[home].catalog.get_subject(tenant, subject)
            return self._settled_at_home(record, tenant, subject, home), access

    def _settled_at_home(
        self, found: SubjectRecord | None, tenant: str, subject: str, home: str
    ) -> SubjectRecord:
        """`_live_at_home`, and the home settled in the directory: its cell holds the subject."""
        record = _live_at_home(found, tenant, subject, home)
        self.directory.settle(tenant, subject, home)
        return record

    def _decided(
        self,
        ctx: RequestContext,
        action: Action,
        tenant: str,
        home: str,
        subject: str,
        key: str | None = None,
        *,
        durable: bool = True,
        ref: ObjectRef | None = None,
    ) -> Access:
        """`Guard.authorize` in the subject's home cell (`authorize_object` for the
        object ``ref`` names, when given: tenant, subject and key are then its). An
        approval it asks for a subject already forgotten would name the subject again,
        in clear: what a forget does after its catalog mark is done again
        (`_finish_forget`), which replaces those names by their pseudonyms, before the
        refusal goes."""
        try:
            if ref is not None:
                return self.governance.guard.authorize_object(
                    ctx, action, ref, home, durable=durable
                )
            return self.governance.guard.authorize(
                ctx, action, tenant, home, subject, key, durable=durable
            )
        except ApprovalRequired:
            record = self.cells[home].catalog.get_subject(tenant, subject)
            if record is not None and record.forgotten_at is not None:
                self._finish_forget(tenant, subject)
            raise

    def _subject_key(self, record: SubjectRecord, access: Access) -> bytes:
        """The subject key, from the custodian."""
        wrapped = record.wrapped_key
        assert wrapped is not None
        scope = KeyScope(record.tenant, record.jurisdiction)
        return self._key_use(
            access, lambda why: self.custodian.unwrap(scope, record.key_id, wrapped, why)
        )

    def _key_use(self, access: Access, use: Callable[[Justification], _T]) -> _T:
        """A custodian call (wrap, unwrap, destroy) for an access, once its audit entry is
        durable (`Access.justification` waits for it), with its justification; a refusal
        by the custodian is audited too."""
        why = access.justification()
        try:
            return use(why)
        except AccessDenied as refusal:
            self.governance.record_custodian_refusal(access, refusal)
            raise

    # writes -------------------------------------------------------------------

    def put(
        self,
        ref: ObjectRef,
        data: bytes | BinaryIO,
        *,
        if_match: int | None = None,
        ctx: RequestContext | None = None,
        progress: Progress | None = None,
    ) -> ObjectInfo:
        """Store a new version of ref; returns it once durable and visible.

        Bytes-like data is read in place, not copied: leave it unchanged until
        put returns.
        """
        ctx = ctx or local_context("write")
        new_object_key(ref.key)
        if if_match is not None and not 0 <= if_match <= MAX_VERSION:
            raise InvalidInput(
                f"version {if_match} is out of range: --if-match takes 0 (the key must be "
                f"new) or a version from 1 to {MAX_VERSION}"
            )
        source = memoryview(data) if isinstance(data, bytes | bytearray | memoryview) else data
        if isinstance(source, memoryview) and not source.c_contiguous:
            raise InvalidInput("put needs contiguous bytes: pass bytes(data)")
        if not isinstance(source, memoryview) and not hasattr(source, "readinto"):
            raise InvalidInput(  # a str, or a file opened without 'b': refused before audit
                f"put needs bytes or a binary stream, not {type(data).__name__} "
                "(encode text; open files with 'rb')"
            )
        home = self._home(ref.tenant, ref.subject, ctx, Action.WRITE, ref.key)
        access = self._decided(
            ctx, Action.WRITE, ref.tenant, home, ref.subject, ref=ref, durable=False
        )
        catalog = self.cells[home].catalog
        with _AnsweredAfterAudit(access):  # as _authorized, and only after the decision
            if isinstance(source, memoryview) and source.nbytes <= self.config.segment_size:
                found, version = catalog.lookup_for_write(ref)  # one query for both
            else:
                found, version = catalog.get_subject(ref.tenant, ref.subject), None
            subject = self._settled_at_home(found, ref.tenant, ref.subject, home)
            subject_key = _once(functools.partial(self._subject_key, subject, access))
            if version is None:
                return self._write_version(ref, source, subject, subject_key, if_match, progress)
            assert isinstance(source, memoryview)
            return self._write_unreserved(
                ref, source, subject, version, subject_key, if_match, progress
            )

    def _write_unreserved(
        self,
        ref: ObjectRef,
        source: memoryview,
        subject: SubjectRecord,
        version: int,
        subject_key: Callable[[], bytes],
        if_match: int | None,
        progress: Progress | None,
    ) -> ObjectInfo:
        """A one-segment put in memory: no reservation, so one catalog write, not two.

        The catalog's write lock was where concurrent small puts queued. A race
        lost to another writer of the key or to gc costs a rewrite of a small
        object, so it is written again (catalog port, `insert_committed`); after
        a few lost races in a row it reserves its version, as a large put does, so
        no rival writer can starve it and a sweep's cutoff no longer matters.
        """
        catalog = self.cells[subject.jurisdiction].catalog
        for _ in range(_UNRESERVED_TRIES):
            try:
                written = self._write_version(
                    ref, source, subject, subject_key, if_match, None, version=version
                )
            except WriteRaced:
                found, version = catalog.lookup_for_write(ref)
                _live_at_home(found, ref.tenant, ref.subject, subject.jurisdiction)
                continue
            if progress is not None:
                progress(written.size)
            return written
        return self._write_version(ref, source, subject, subject_key, if_match, progress)

    def _write_version(
        self,
        ref: ObjectRef,
        source: BinaryIO | memoryview,
        subject: SubjectRecord,
        subject_key: Callable[[], bytes],
        if_match: int | None,
        progress: Progress | None,
        *,
        version: int | None = None,
    ) -> ObjectInfo:
        """Write one version: reserved first, unless `version` is the one to try unreserved."""
        reserve = version is None
        cell = self.cells[subject.jurisdiction]
        nodes = _placed(cell, placement_seed(ref), self.code)
        object_id = new_object_id(self._clock())
        created = minted_at(object_id)
        if version is None:
            version = cell.catalog.reserve(ref, object_id, created)
            self._on_step("reserved")
        binding = SegmentBinding(ref, version, object_id)
        data_key = hierarchy.new_key()
        writer = ShardSetWriter(
            stores=[cell.store(node.id) for node in nodes],
            object_id=object_id,
            version=version,
            code=self.code,
            cipher=SegmentCipher(data_key, binding),
            segment_size=self.config.segment_size,
            pool=self._pool,
            on_step=self._on_step,
            deadline=self.deadline,
        )
        try:
            written = writer.write(source, progress)
            # the data key is fresh, so shards need no custodian; wrapping it does
            manifest = Manifest(
                ref=ref,
                version=version,
                object_id=object_id,
                size=written.size,
                segment_size=self.config.segment_size,
                segments=written.segments,
                k=self.code.k,
                m=self.code.m,
                backend=self.code.backend,
                nodes=tuple(node.id for node in nodes),
                block_size=written.block_size,
                last_block_size=written.last_block_size,
                block_hashes=written.block_hashes,
                locations=written.locations,
                wrapped_data_key=hierarchy.wrap_data_key(subject_key(), data_key, binding),
                subject_key_id=subject.key_id,
                created_at=created,
            )
            if reserve:
                cell.catalog.commit(ref, version, manifest.to_bytes(), written.size, if_match)
            else:
                record = VersionRecord(
                    ref,
                    version,
                    VersionState.COMMITTED,
                    object_id,
                    written.size,
                    created,
                    manifest.to_bytes(),
                )
                cell.catalog.insert_committed(record, if_match)
        except BaseException:
            if not _went_through(cell, ref, version, object_id):
                writer.discard()
                if reserve:
                    cell.catalog.abandon(ref, version)
            raise
        self._on_step("committed")
        return info_of(manifest)

    def delete(
        self, ref: ObjectRef, version: int | None = None, ctx: RequestContext | None = None
    ) -> int:
        """Mark the object (or one version) deleted; gc removes the shards."""
        ctx = ctx or local_context()
        _check_version(version)
        subject, _ = self._authorized(ctx, Action.DELETE, ref.tenant, ref.subject, ref.key)
        marked = self.cells[subject.jurisdiction].catalog.mark_deleted(ref, version)
        if not marked:
            what = f"{ref} v{version}" if version else str(ref)
            raise NotFound(f"no object {what}")
        return marked

    def forget(self, tenant: str, subject: str, ctx: RequestContext | None = None) -> ForgetResult:
        """Destroy the subject's key at the custodian, then collect every shard of theirs.

        Needs a met approval (an invariant of the policy). Returns a deletion
        receipt signed by the cell, with the audit entry of the forget and its
        inclusion proof under a head cosigned by the partner. Run again for a
        subject already forgotten (a forget cut short by kill -9, say, or a receipt
        lost on its way), it finishes what is left and returns the receipt of that
        forget: one outcome entry per forget, whichever run wrote it.
        """
        ctx = ctx or local_context("forget-subject")
        # decided and audited first, like every access: "already forgotten" is an answer
        home = self._home(tenant, subject, ctx, Action.FORGET)
        access = self._decided(ctx, Action.FORGET, tenant, home, subject)
        cell = self.cells[home]
        with _AnsweredAfterAudit(access):
            found = cell.catalog.get_subject(tenant, subject)
            record = _at_home(_registered(found, tenant, subject), home)
        if record.forgotten_at is None:
            self.directory.settle(tenant, subject, home)
            scope = KeyScope(tenant, record.jurisdiction)
            nonce = receipt_nonce(self.governance.cell(home), tenant, subject, record.key_id)
            # recorded first: a kill -9 from here on leaves the other cells' scrubs owed
            self.governance.owe_scrubs(home, tenant, subject)
            # the custodian's tombstone first: refused, the catalog and shards stay as they were
            attested = self._key_use(
                access, lambda why: self.custodian.destroy(scope, record.key_id, why, nonce=nonce)
            )
            # the forget's time is the one the custodian attests, so receipts state one time
            at = open_attestation(attested, None).epoch() if attested else self._clock()
            cell.catalog.forget_subject(tenant, subject, at, access.audit_index)
        return self._finish_forget_with_receipt(access, cell, record)

    def _finish_forget_with_receipt(
        self, access: Access, cell: Cell, record: SubjectRecord
    ) -> ForgetResult:
        """After the catalog mark: collect what is left, audit the outcome unless a run
        before did (none did if this run's decision made the mark), then a head
        cosigned by the partner and the receipt."""
        tenant, subject = record.tenant, record.subject
        skipped, unscrubbed = self._collect_forgotten(cell, tenant, subject)
        forgotten = cell.catalog.get_subject(tenant, subject)
        progress = cell.catalog.forget_progress(tenant, subject)
        assert forgotten is not None and forgotten.forgotten_at is not None and progress
        audit = self.governance.cell(cell.jurisdiction)
        # the same on every run of this forget: one cut short left a commitment it opens
        nonce = receipt_nonce(audit, tenant, subject, record.key_id)
        forgotten_at = utc_seconds(forgotten.forgotten_at)
        attested = self.custodian.destroy_attestation(
            KeyScope(tenant, record.jurisdiction), record.key_id
        )  # none from a custodian that signs none, or for a key destroyed before one did
        index = None
        if progress.decided_at != access.audit_index:
            index = self.governance.forget_outcome(
                cell.jurisdiction, tenant, subject, record.key_id,
                known=progress.outcome, since=progress.decided_at or 0,
            )  # fmt: skip
        if index is None:
            # the log says the destroy was attested, so a receipt without it is refused
            committed = {"destroy_attestation": attestation_digest(attested)} if attested else {}
            index = self.governance.record_outcome(
                access, "forgotten", key_id=record.key_id,
                versions_deleted=progress.versions_deleted, shards_removed=progress.shards_removed,
                subject_commitment=subject_commitment(tenant, subject, nonce),
                forgotten_at=forgotten_at, **committed,
            )  # fmt: skip
        if index != progress.outcome:
            cell.catalog.note_forget_progress(tenant, subject, outcome=index)
        told = audit.log.entry(index).details  # an entry written before v2 has no time
        what = Forgotten(
            tenant, subject, cell.jurisdiction, record.key_id, int(told["versions_deleted"] or 0),
            int(told["shards_removed"] or 0), str(told.get("forgotten_at") or forgotten_at), nonce,
            attested,
        )  # fmt: skip
        head = self.governance.publish_head(cell.jurisdiction)
        # checked against the partner's key before it is signed into a receipt
        custodian = self.governance.custodian_key.verifier if attested else None
        receipt = make_receipt(audit, head, index, what, custodian)
        return ForgetResult(
            tenant, subject, cell.jurisdiction, record.key_id, what.versions_deleted,
            what.shards_removed, forgotten.forgotten_at, index, receipt.to_bytes().decode("utf-8"),
            tuple(sorted(skipped)), tuple(sorted(unscrubbed)),
        )  # fmt: skip

    def _finish_forget(self, tenant: str, subject: str) -> None:
        """`_collect_forgotten` in the subject's home cell, if it has one."""
        home = self.directory.home(tenant, subject)
        if home is None or home not in self.cells:
            return
        self._collect_forgotten(self.cells[home], tenant, subject)

    def _collect_forgotten(
        self, cell: Cell, tenant: str, subject: str
    ) -> tuple[set[str], tuple[str, ...]]:
        """What a forget does after marking the subject forgotten, again if need be: one
        killed there (its key destroyed, its catalog row marked) left shards, freed
        pages and approvals naming the subject. Each step is idempotent; the shards
        each batch removes are added to the forget's count in the catalog. Returns the
        nodes it could not remove shards from (unavailable, hung or failing), and the
        cells whose approvals it could not reach (left owing the scrub: `owed_scrubs`)."""

        def counted(shards: int) -> None:
            cell.catalog.note_forget_progress(tenant, subject, shards_removed=shards)

        with BoundedStores(self.deadline) as bounded:  # a hung node's shards become orphans
            _, _, skipped = collect_claimed(
                bounded.cell(cell), self.code.n, 0.0, math.inf, (tenant, subject), counted
            )
        cell.catalog.erase_freed()
        unscrubbed = self.governance.forget_subject(cell.jurisdiction, tenant, subject)
        return skipped, unscrubbed

    # reads --------------------------------------------------------------------

    def _record(
        self,
        ref: ObjectRef,
        version: int | None,
        ctx: RequestContext,
        action: Action,
        *,
        durable: bool = True,
    ) -> tuple[Cell, SubjectRecord, VersionRecord, Access]:
        """As `_authorized`, with the version looked up in the same query as the subject."""
        _check_version(version)
        home = self._home(ref.tenant, ref.subject, ctx, action, ref.key)
        access = self._decided(ctx, action, ref.tenant, home, ref.subject, ref=ref, durable=durable)
        cell = self.cells[home]
        with _AnsweredAfterAudit(access):
            subject, record = cell.catalog.lookup(ref, version)
            subject = self._settled_at_home(subject, ref.tenant, ref.subject, home)
            if record is None or record.manifest is None:
                what = f"{ref} v{version}" if version else str(ref)
                raise NotFound(f"no object {what}")
        return cell, subject, record, access

    def stat(
        self, ref: ObjectRef, version: int | None = None, ctx: RequestContext | None = None
    ) -> ObjectInfo:
        _, _, record, _ = self._record(ref, version, ctx or local_context(), Action.STAT)
        return info_of(_manifest_of(record))

    def open_read(
        self, ref: ObjectRef, version: int | None = None, ctx: RequestContext | None = None
    ) -> ObjectReader:
        """A streaming reader; iterate it for plaintext, then check .damage."""
        ctx = ctx or local_context("read")
        cell, subject, record, access = self._record(ref, version, ctx, Action.READ, durable=False)
        with _AnsweredAfterAudit(access):
            return self._open_reader(ref, cell, subject, record, access)

    def _open_reader(
        self, ref: ObjectRef, cell: Cell, subject: SubjectRecord, record: VersionRecord,
        access: Access,
    ) -> ObjectReader:  # fmt: skip
        manifest = _manifest_of(record)
        code = self.code.matching(manifest.k, manifest.m, manifest.backend)
        reader = ObjectReader(  # starts fetching and verifying shards: no key needed
            manifest=manifest,
            stores=[cell.store(node_id) for node_id in manifest.nodes],
            code=code,
            pool=self._pool,
            deadline=self.deadline,
            reload=lambda: _manifest_now(cell, manifest),
        )
        try:
            subject_key = self._subject_key(subject, access)
            binding = SegmentBinding(ref, manifest.version, manifest.object_id)
            data_key = hierarchy.unwrap_data_key(subject_key, manifest.wrapped_data_key, binding)
            reader.unlock(SegmentCipher(data_key, binding))
        except BaseException:
            reader.close()
            raise
        return reader

    def get(
        self, ref: ObjectRef, version: int | None = None, ctx: RequestContext | None = None
    ) -> bytes:
        with self.open_read(ref, version, ctx) as reader:
            data = reader.read_all()
        self.report_damage(reader.damage)
        return data

    def report_damage(self, damage: list[DamageRecord]) -> None:
        """Queue damaged shards found by a read for repair."""
        for item in damage:
            home = self.directory.home(item.ref.tenant, item.ref.subject)
            if home is not None:
                self.cells[home].catalog.record_damage(item)

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
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidInput(f"limit must be between 1 and {MAX_LIST_LIMIT}")
        for what, text in (("prefix", prefix), ("start-after key", start_after)):
            if not text.isascii():  # lone surrogates (undecodable argv bytes) cannot be stored
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    raise InvalidInput(
                        f"invalid {what} {shown(text)}: not valid UTF-8 text"
                    ) from None
            # no stored key is other than NFC: a prefix that is would match none, silently
            nfc_text(text, what)
        record, _ = self._authorized(ctx or local_context(), Action.LIST, tenant, subject)
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
        subject, _ = self._authorized(ctx, Action.STAT, ref.tenant, ref.subject, ref.key)
        rows = self.cells[subject.jurisdiction].catalog.list_versions(ref)
        if not rows:
            raise NotFound(f"no object {ref}")
        return [info_of(Manifest.from_bytes(row.manifest)) for row in rows if row.manifest]

    def where(
        self, ref: ObjectRef, version: int | None = None, ctx: RequestContext | None = None
    ) -> builtins.list[ShardLocation]:
        """Every shard of the version: segment, index, node, jurisdiction, facility."""
        cell, _, record, _ = self._record(ref, version, ctx or local_context(), Action.STAT)
        manifest = _manifest_of(record)
        facilities = {node.id: node.facility for node in cell.nodes}
        return [  # a node the config no longer lists was still one of this cell's
            ShardLocation(
                segment, index, node_id, cell.jurisdiction, facilities.get(node_id, UNKNOWN)
            )
            for segment in range(manifest.segments)
            for index, node_id in enumerate(manifest.nodes)
        ]

    # operations ---------------------------------------------------------------

    def gc(self, grace_seconds: float = 3600.0) -> GcReport:
        """Collect deleted and abandoned versions, orphan shards and stale temporaries."""
        if not grace_seconds >= 0:
            raise InvalidInput(f"gc grace must be zero or more seconds, not {grace_seconds}")
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


_ANSWERS = (NotFound, SubjectForgotten, IntegrityError)
"""Errors that tell the caller something about the data: given only once audited."""


class _AnsweredAfterAudit:
    """An error is an answer too: raise it only once the access's audit entry is durable.

    If the entry cannot be written, an answer about the data (not found, forgotten,
    inconsistent) becomes `AuditUnavailable`: fail closed. A failure (the catalog
    unreadable, say) keeps its own message. A class, not a @contextmanager
    generator: every read passes through two of these.
    """

    __slots__ = ("_access",)

    def __init__(self, access: Access) -> None:
        self._access = access

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if kind is None:
            return
        if issubclass(kind, _ANSWERS):
            self._access.wait_audited()
            return
        with contextlib.suppress(AuditUnavailable):
            self._access.wait_audited()


def _once(make: Callable[[], _T]) -> Callable[[], _T]:
    """MAKE's result, made at the first call only: a put that writes again after a lost
    race asks the custodian for the subject key once. A closure: functools.cache cost
    each put about 30 k instructions to set up (its wrapper copies attributes)."""
    made: list[_T] = []

    def once() -> _T:
        if not made:
            made.append(make())
        return made[0]

    return once


def _placed(cell: Cell, seed: bytes, code: ErasureCode) -> list[NodeSpec]:
    """The stripe's nodes, among those whose stores could be opened; too few names them."""
    try:
        return place_stripe(seed, cell.placeable_nodes(), cell.jurisdiction, code.k, code.m)
    except TooFewNodes as exc:
        unavailable = cell.unavailable_reasons()
        if not unavailable:
            raise
        raise TooFewNodes(f"{exc}; unavailable: {unavailable}") from None


def _went_through(cell: Cell, ref: ObjectRef, version: int, object_id: bytes) -> bool:
    """Whether a put's commit went through though the put failed after it (Ctrl-C, or a
    flush that failed once the row was written): its shards are then the version's
    and must stay. Not knowing counts as yes: gc takes shards no row names, while
    discarding a committed version's would leave it listed and unreadable."""
    try:
        record = cell.catalog.get_version(ref, version)
    except BaseException:
        return True
    return record is not None and record.object_id == object_id


def _manifest_of(record: VersionRecord) -> Manifest:
    """The row's manifest, if it is the one written for the row's version.

    A manifest is self-consistent: its version and object id bind its data key,
    so one misfiled under another version's row (a catalog restored or edited by
    hand) would decrypt and be returned, its bytes and number, as that version.
    Two comparisons: the read path can afford them.
    """
    assert record.manifest is not None
    manifest = Manifest.from_bytes(record.manifest)
    if manifest.object_id != record.object_id or manifest.version != record.version:
        raise IntegrityError(  # naming no other object: it may be another tenant's
            f"catalog row {record.ref} v{record.version} holds a manifest written for "
            "another version: refusing to read it as this one; restore the catalog"
        )
    return manifest


def _manifest_now(cell: Cell, manifest: Manifest) -> tuple[Manifest, list[ShardStore]] | None:
    """MANIFEST's version as its row holds it now, with its nodes' stores; None if it is
    gone (deleted, forgotten). A reader asks it when the copies it names are not enough:
    a repair or spread may have replaced them since it loaded the manifest."""
    record = cell.catalog.get_version(manifest.ref, manifest.version)
    if record is None or record.manifest is None or record.object_id != manifest.object_id:
        return None
    now = _manifest_of(record)
    return now, [cell.store(node_id) for node_id in now.nodes]


def _check_version(version: int | None) -> None:
    """A version number the catalog can hold (a signed 64-bit integer), or none."""
    if version is not None and not 1 <= version <= MAX_VERSION:
        raise InvalidInput(
            f"version {version} is out of range: versions run from 1 to {MAX_VERSION}"
        )


def _registered(found: _T | None, tenant: str, subject: str) -> _T:
    """What was looked up for the subject, unless it is not registered (`NotFound`)."""
    if found is None:
        raise NotFound(
            f"no subject {subject} in tenant {tenant}: register it with 'shardvault subject add'"
        )
    return found


def _at_home(record: SubjectRecord, home: str) -> SubjectRecord:
    """The record, if it names the cell the directory sent the request to: the access
    was decided and audited there, and its data goes where the record says."""
    if record.jurisdiction != home:
        raise IntegrityError(
            f"subject {record.subject} of tenant {record.tenant} is recorded in {home}'s "
            f"catalog as living in {record.jurisdiction}: refusing to guess; restore the "
            "catalog or the directory"
        )
    return record


def _live_at_home(
    found: SubjectRecord | None, tenant: str, subject: str, home: str
) -> SubjectRecord:
    """The subject's record from its home cell, if registered there, at home and not forgotten."""
    return _live(_at_home(_registered(found, tenant, subject), home))


def _live(record: SubjectRecord) -> SubjectRecord:
    """The record, unless the subject was forgotten (`SubjectForgotten`)."""
    if record.forgotten_at is not None or record.wrapped_key is None:
        raise SubjectForgotten(
            f"subject {record.subject} of tenant {record.tenant} was forgotten on "
            f"{_forgotten_on(record)}; its data is unrecoverable"
        )
    return record


def _forgotten_on(record: SubjectRecord) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(record.forgotten_at or 0))
