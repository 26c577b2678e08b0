"""A cluster pull: each byte fetched from the store once per cluster, shared between nodes.

Roles. The lowest rank of each node is its *fetcher*; the node's other ranks share its
DEST and only wait for it, then check every file is recorded complete (they never touch
the network unless their fetcher is lost). Rank 0 also lists and plans.

Rounds, among the fetchers (the *members* of a round)::

    post my state (complete files, parts held in resume journals) -> agree who is in
      ├─ parts that some member needs and none holds?  fetch my contiguous share of
      │  them from the store (the engine, ``only=`` those parts)  -> next round
      └─ else parts that one holds and another needs?  exchange them (all-gather steps,
         written into temp files and journals)  -> done, or next round if it failed
    finalize: the normal engine over the whole plan: it finds every part in its journal,
    verifies the file against the store's checksums and renames it into place; any part
    still missing (a lost peer, a failed exchange) is fetched from the store right there.

A member lost in a round (silent for the timeout, or finished with an error) is left out
of the next; the parts only it held become missing and the others fetch them, which is
the fallback. With fallback off, losing a member fails the pull naming it. Losing the
rendezvous store (rank 0 hosts it unless torchrun's agent does) ends coordination: each
rank then finishes on its own, or fails when fallback is off.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelpull.cluster.coord import Coordinator, KVStore, StoreLost
from modelpull.cluster.inventory import local_state, make_plan
from modelpull.cluster.options import ClusterOptions
from modelpull.cluster.plan import (
    ClusterPlan,
    MemberState,
    PartRef,
    Schedule,
    View,
    assign_missing,
    missing_parts,
    plan_transfers,
)
from modelpull.cluster.report import ClusterEvents, describe_error, rebuild_error
from modelpull.cluster.sharing import Sharing, chunk_size, run_exchange, wants_nccl
from modelpull.cluster.topology import Layout, Topology, check_dests
from modelpull.cluster.transport import (
    cuda_available,
    rendezvous,
    require_torch,
)
from modelpull.config import PullConfig
from modelpull.errors import ClusterError, InterruptedPullError, ModelPullError
from modelpull.events import (
    Observer,
    PullFinished,
    PullStarted,
)
from modelpull.files import make_folder
from modelpull.keywords import FilterKeywords, accept
from modelpull.plan import check_dest_paths
from modelpull.resolve import Target, resolved
from modelpull.results import ClusterPullResult, FileOutcome
from modelpull.retry import retry_events
from modelpull.state import StateDir
from modelpull.tally import dispatcher, report
from modelpull.transfer import transfer

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["pull_distributed"]

log = logging.getLogger("modelpull")

# Rounds are few in practice (fetch, exchange; one more fetch and exchange per loss);
# the cap only stops a cluster whose every fetch keeps failing from looping.
MAX_ROUNDS = 8
# Calls in this process: keys of successive pulls never meet in the store.
_calls = itertools.count()


def pull_distributed(
    uri: str | Target,
    dest: str | os.PathLike[str],
    *,
    observers: Sequence[Observer] = (),
    timeout: float | None = None,
    fallback: bool | None = None,
    options: ClusterOptions | None = None,
    **kwargs: Unpack[FilterKeywords],
) -> ClusterPullResult:
    """Pull ``uri`` into ``dest`` on every node of a job, fetching each byte once.

    Call it on every rank of a job started by torchrun or any launcher that sets
    ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``. ``dest`` may hold
    ``{rank}``, ``{local_rank}`` or ``{node}``. ``timeout`` (seconds, default 300) and
    ``fallback`` (default on) override :class:`ClusterOptions` read from the
    environment; ``options`` replaces them whole. ``observers`` and the keywords
    (``include``, ``exclude``, ``config``, ``credentials``, ``backend``) are
    :func:`modelpull.pull`'s. Raises :class:`~modelpull.errors.ModelPullError`
    subclasses only: :class:`~modelpull.errors.BackendUnavailableError` without torch,
    :class:`~modelpull.errors.ClusterError` when the cluster cannot finish.
    """
    accept("pull_distributed", kwargs, FilterKeywords)
    require_torch()
    opts = (
        options
        if options is not None
        else ClusterOptions.from_env(timeout=timeout, fallback=fallback)
    )
    with resolved(uri, kwargs) as source:
        topo = Topology.from_env(opts)
        target = Path(topo.expand(os.fspath(dest)))
        started = time.monotonic()
        # Before joining: a bad setting fails every rank alike, at once, with its own error.
        source.open()
        store = rendezvous(topo.rank, topo.world_size, opts.timeout)
        coord = Coordinator(store, f"modelpull/{next(_calls)}", topo.rank, opts.timeout)
        run = _Run(
            source=source,
            target=target,
            include=kwargs.get("include"),
            exclude=kwargs.get("exclude"),
            opts=opts,
            topo=topo,
            coord=coord,
            store=store,
            observers=observers,
        )
        return run.execute(started)


@dataclass
class _Run:
    source: Target
    target: Path
    include: Sequence[str] | None
    exclude: Sequence[str] | None
    opts: ClusterOptions
    topo: Topology
    coord: Coordinator
    store: KVStore
    observers: Sequence[Observer]

    def __post_init__(self) -> None:
        self.cfg = self.source.config
        self.events = ClusterEvents(self.observers)
        self.tally = self.events.tally
        self.emit = self.events.emit
        self.me = self.topo.rank
        self.layout = Layout({self.me: self.topo.node})
        self.from_peers = 0
        self.to_peers = 0
        self.lost: list[int] = []
        self.rounds = 0
        self.settings: dict[str, Any] = {}

    # -- the whole call ---------------------------------------------------------------

    def execute(self, started: float) -> ClusterPullResult:
        coord = self.coord
        interrupted = False
        ok = False
        outcomes: list[FileOutcome] = []
        try:
            coord.start()
            self.layout = self._layout()
            log.debug("rank %d: joined; fetchers %s", self.me, list(self.layout.fetchers))
            # After joining, so a DEST that cannot be used is reported to the others at
            # once (through this rank's final status) instead of leaving them to time out.
            make_folder(self.target)
            plan = self._plan()
            check_dest_paths(plan.files, self.target)  # before any byte, from store or peer
            log.debug("rank %d: plan of %d files", self.me, len(plan.files))
            backend = self.source.backend.name
            self.emit(PullStarted(backend, plan.bucket, len(plan.files), plan.total_bytes))
            try:
                if self.me in self.layout.fetchers:
                    outcomes = self._fetcher(plan)
                else:
                    outcomes = self._follower(plan)
            except StoreLost as exc:
                outcomes = self._alone(plan, f"lost the rendezvous store ({exc})")
            ok = True
            with contextlib.suppress(StoreLost):
                coord.publish(f"done/{self.me}", {"ok": True})
        except StoreLost as exc:
            # Before the plan was known: the only way on is a pull of our own.
            outcomes = self._alone(None, f"lost the rendezvous store ({exc})")
            ok = True
        except BaseException as exc:
            interrupted = isinstance(exc, KeyboardInterrupt | InterruptedPullError)
            with contextlib.suppress(StoreLost):
                coord.publish(f"done/{self.me}", {"ok": False, **describe_error(exc, self.me)})
            raise
        finally:
            if self.me == 0 and not interrupted:
                self._linger()
            coord.stop()
            seconds = time.monotonic() - started
            fetched = sum(1 for o in outcomes if o.status == "fetched")
            self.emit(PullFinished(files=fetched, bytes=self.tally.bytes, seconds=seconds, ok=ok))
        log.info(
            "rank %d: %d bytes from the store, %d from peers, %d sent to peers, %d round(s)",
            self.me,
            self.tally.bytes,
            self.from_peers,
            self.to_peers,
            self.rounds,
        )
        return ClusterPullResult(
            uri=str(self.source.uri),
            dest=str(self.target),
            backend=self.source.backend_name,
            config=self.cfg.describe(),
            **report(self.tally, outcomes, seconds),
            rank=self.me,
            fetcher=self.layout.fetcher_of(self.me),
            nodes=self.layout.node_count(),
            bytes_from_peers=self.from_peers,
            bytes_to_peers=self.to_peers,
            lost_ranks=tuple(sorted(set(self.lost))),
            rounds=self.rounds,
        )

    def _linger(self) -> None:
        """Rank 0 may host the store: keep it up until every rank is done with it."""
        others = {r: f"done/{r}" for r in range(self.topo.world_size) if r != self.me}
        with contextlib.suppress(StoreLost):
            self.coord.wait(others, finished_is_lost=False)

    # -- joining and planning ---------------------------------------------------------

    def _layout(self) -> Layout:
        where = f"{socket.gethostname()}:{self.target.resolve()}"
        mine = {"node": self.topo.node, "dest": where}
        gathered = self.coord.gather("node", mine, range(self.topo.world_size))
        absent = sorted(r for r, info in gathered.items() if info is None)
        if absent:
            self._lose(absent, "left before the pull began")
        present = {r: info for r, info in gathered.items() if info is not None}
        layout = Layout({r: str(info["node"]) for r, info in present.items()})
        check_dests(layout, {r: str(info["dest"]) for r, info in present.items()}, self.me)
        return layout

    def _plan(self) -> ClusterPlan:
        if self.me == 0:
            try:
                plan = self._make_plan()
            except ModelPullError as exc:
                self.coord.publish("plan", {"error": describe_error(exc, self.me)})
                raise
            self.settings = {"chunk_size": self.opts.chunk_size, "backend": self.opts.backend}
            self.coord.publish("plan", {"plan": plan.to_json(), "settings": self.settings})
            log.info(
                "rank 0: %d files, %d bytes, over %d node(s)",
                len(plan.files),
                plan.total_bytes,
                self.layout.node_count(),
            )
            return plan
        got = self.coord.wait({0: "plan"})[0]
        if got is None:
            self._lose([0], "was lost before it shared the plan")
            return self._make_plan()
        if "error" in got:
            raise rebuild_error(got["error"], "rank 0 could not plan the pull")
        self.settings = dict(got["settings"])
        return ClusterPlan.from_json(got["plan"])

    def _make_plan(self) -> ClusterPlan:
        on_retry = retry_events(dispatcher([self.tally, self.emit]))
        return make_plan(
            self.source.backend, self.source.uri, self.include, self.exclude, self.cfg, on_retry
        )

    # -- losing peers -----------------------------------------------------------------

    def _lose(self, ranks: Sequence[int], what: str) -> None:
        """Note lost ranks; with fallback off, fail naming them."""
        failed = []
        for rank in ranks:
            status = None
            with contextlib.suppress(StoreLost):
                if self.coord.exists(f"done/{rank}"):
                    status = self.coord.read(f"done/{rank}")
            if status is not None and status.get("ok"):
                continue  # it finished: nothing of it is lost
            why = f"failed: {status['message']}" if status else "stopped responding"
            failed.append((rank, why))
        if not failed:
            return
        self.lost.extend(rank for rank, _ in failed)
        names = "; ".join(f"rank {rank} {why}" for rank, why in failed)
        if not self.opts.fallback:
            raise ClusterError(
                f"lost {names} ({what}); fallback is off (--no-dist-fallback), so its share is "
                "not fetched from the store - run the same command again to resume",
                ranks=tuple(rank for rank, _ in failed),
            )
        log.warning("rank %d: lost %s (%s); the others fetch its share", self.me, names, what)

    def _alone(self, plan: ClusterPlan | None, why: str) -> list[FileOutcome]:
        if not self.opts.fallback:
            raise ClusterError(
                f"rank {self.me}: {why}; fallback is off (--no-dist-fallback) - run the same "
                "command again to resume"
            )
        log.warning("rank %d: %s; finishing the pull on its own", self.me, why)
        return self._finalize(plan if plan is not None else self._make_plan(), announce=True)

    # -- a node's other ranks ---------------------------------------------------------

    def _follower(self, plan: ClusterPlan) -> list[FileOutcome]:
        fetcher = self.layout.fetcher_of(self.me)
        status = self.coord.wait({fetcher: f"done/{fetcher}"}, finished_is_lost=False)[fetcher]
        if status is None:
            self._lose([fetcher], "this node's fetcher")
            return self._finalize(plan, announce=True, force=False)
        if not status.get("ok"):
            raise rebuild_error(status, f"rank {fetcher}, this node's fetcher, failed")
        state = StateDir(self.target)
        incomplete = [
            f.path for f in plan.files if not state.is_complete(f.path, self.target / f.path, f.obj)
        ]
        if incomplete and not self.opts.fallback:
            raise ClusterError(
                f"rank {fetcher}, this node's fetcher, finished, but {len(incomplete)} file(s) "
                f"are not complete in {self.target} (first: {incomplete[0]}): ranks of one "
                "node must share one DEST",
                ranks=(fetcher,),
            )
        if incomplete:
            log.warning(
                "rank %d: %d file(s) not complete in %s although rank %d finished (ranks of "
                "one node should share one DEST); fetching them",
                self.me,
                len(incomplete),
                self.target,
                fetcher,
            )
        return self._finalize(plan, announce=True, force=False)

    # -- fetchers ---------------------------------------------------------------------

    def _fetcher(self, plan: ClusterPlan) -> list[FileOutcome]:
        members = self.layout.fetchers
        fetch_failed = False
        nccl_failed = False
        for rnd in range(MAX_ROUNDS):
            self.rounds = rnd + 1
            state = self._state(plan, fetch_failed=fetch_failed, nccl_failed=nccl_failed)
            if rnd == 0:
                self.events.announce(plan, state)
            view = self._sync(rnd, members, state)
            if view is None:
                return self._alone(plan, "the other fetchers gave up on this rank")
            gone = [m for m in members if m not in view.members]
            if gone:
                self._lose(gone, f"round {rnd}")
            members = view.members
            missing = missing_parts(plan, view)
            log.debug(
                "rank %d: round %d: members %s, %d parts missing",
                self.me,
                rnd,
                members,
                len(missing),
            )
            if missing:
                if all(view.states[m].fetch_failed for m in members) and rnd > 0:
                    break  # no member can fetch: the engine below raises the reason
                share = assign_missing(missing, view)[self.me]
                fetch_failed = not self._fetch_share(plan, share)
                continue
            schedule = plan_transfers(plan, view, chunk_size(self._chunk_wanted(), len(members)))
            if schedule.steps == 0:
                break
            ok, nccl_broke = self._exchange(plan, view, schedule)
            nccl_failed = nccl_failed or nccl_broke
            if ok:
                break
        return self._finalize(plan, announce=False)

    def _state(self, plan: ClusterPlan, *, fetch_failed: bool, nccl_failed: bool) -> MemberState:
        return local_state(
            plan,
            self.target,
            self.me,
            self._engine_config(plan),
            fetch_failed=fetch_failed,
            cuda=wants_nccl(self._backend_wanted()) and cuda_available(),
            nccl_failed=nccl_failed,
        )

    def _sync(self, rnd: int, members: Sequence[int], state: MemberState) -> View | None:
        """Post this round's state, wait for the other members', agree on who is in."""
        others = [m for m in members if m != self.me]
        got = self.coord.gather(f"r{rnd}/state", state.to_json(), others)
        alive = sorted([self.me, *(m for m, v in got.items() if v is not None)])
        agreed = [int(m) for m in self.coord.agree(f"r{rnd}/members", alive)]
        if self.me not in agreed:
            return None
        states = {self.me: state}
        for m in agreed:
            if m != self.me:
                # A member this rank gave up on but another saw has posted its state.
                data = got.get(m) or self.coord.read(f"r{rnd}/state/{m}")
                states[m] = MemberState.from_json(data)
        return View(round=rnd, members=tuple(agreed), states=states)

    def _fetch_share(self, plan: ClusterPlan, share: Sequence[PartRef]) -> bool:
        if not share:
            return True
        only: dict[str, set[int]] = {}
        for ref in share:
            only.setdefault(plan.files[ref.file].path, set()).add(ref.part)
        files = [f for f in plan.files if f.path in only]
        log.info(
            "rank %d: fetching %d parts (%d bytes) of %d file(s) from the store",
            self.me,
            len(share),
            sum(r.length for r in share),
            len(files),
        )
        try:
            transfer(
                self.source,
                files,
                self.target,
                self.events.internal,
                config=self._engine_config(plan),
                only=only,
            )
        except InterruptedPullError:
            raise
        except ModelPullError as exc:
            log.warning("rank %d: fetching its share failed: %s", self.me, exc)
            return False
        return True

    def _exchange(self, plan: ClusterPlan, view: View, schedule: Schedule) -> tuple[bool, bool]:
        """Run one exchange; (succeeded, NCCL failed)."""
        setup = Sharing(
            store=self.store,
            prefix=f"{self.coord.prefix}/r{view.round}/exchange",
            me=self.me,
            device=self.topo.local_rank,
            timeout=self.opts.timeout,
            backend=self._backend_wanted(),
            chunk_size=self._chunk_wanted(),
        )
        done = run_exchange(
            setup, plan, view, schedule, self.target, self._engine_config(plan), self.emit
        )
        self.from_peers += done.received
        self.to_peers += done.sent
        return done.ok, done.nccl_failed

    def _finalize(
        self, plan: ClusterPlan, *, announce: bool, force: bool | None = None
    ) -> list[FileOutcome]:
        """The engine over the whole plan: verify and place, fetching whatever is missing."""
        cfg = self._engine_config(plan)
        if force is not None:
            cfg = dataclasses.replace(cfg, force=force)
        emit = self.events.engine(announce)
        outcomes = transfer(self.source, list(plan.files), self.target, emit, config=cfg)
        # A file completed by a share fetch is found complete here, yet this pull fetched it.
        return [
            dataclasses.replace(o, status="fetched")
            if o.status == "skipped" and o.path in self.events.announced
            else o
            for o in outcomes
        ]

    # -- helpers ----------------------------------------------------------------------

    def _engine_config(self, plan: ClusterPlan) -> PullConfig:
        # Part indices only mean the same thing on every node with the same part size.
        return dataclasses.replace(self.cfg, part_size=plan.part_size)

    def _backend_wanted(self) -> str:
        """The exchange backend rank 0 chose (gloo, nccl, auto), else this rank's option."""
        return str(self.settings.get("backend", self.opts.backend))

    def _chunk_wanted(self) -> int:
        return int(self.settings.get("chunk_size", self.opts.chunk_size))
