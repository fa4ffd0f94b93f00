"""Coalesces: fork branches of one row meet again, merged or failed by the coalesce's policy.

Each coalesce is an instance of the Coalesce statechart keyed by (coalesce name, fork): opened by
the first branch that arrives or is lost, resolved when its policy decides, when its deadline
passes, or at the end of the source. Every step is an event; the fold holds its state.
"""

from __future__ import annotations

from collections.abc import Callable

from engine.plugins.protocol import Row
from engine.work import Context, Work
from statecharts import events as ev

Schedule = Callable[[float, str, str], None]


def coalesce_id(name: str, fork_id: str) -> str:
    return f"{name}:{fork_id}"


class Coalescer:
    def __init__(self, ctx: Context, schedule: Schedule) -> None:
        self.ctx = ctx
        self.schedule = schedule

    def _open(self, name: str, fork_id: str, row_index: int) -> str:
        ctx = self.ctx
        cid = coalesce_id(name, fork_id)
        if cid not in ctx.fold.coalesces:
            cfg = ctx.nodes.coalesces[name]
            deadline = None if cfg.timeout_seconds is None else ctx.now() + cfg.timeout_seconds
            branches = ctx.nodes.dag.coalesce_branches[name]
            ctx.emit(
                cid,
                ev.CoalesceOpened(
                    coalesce=name, row_index=row_index, policy=cfg.policy, branches=branches,
                    deadline=deadline, fork_id=fork_id,
                ),
            )  # fmt: skip
            if deadline is not None:
                self.schedule(deadline, "coalesce", cid)
        return cid

    def arrive(self, w: Work, name: str, branch: str) -> None:
        ctx = self.ctx
        if w.fork_id is None:
            ctx.emit(w.token_id, ev.TokenFailed(reason="not_a_branch", node=name))
            return
        cid = coalesce_id(name, w.fork_id)
        if cid in ctx.fold.resolved_coalesces:
            detail = f"coalesce {cid} already {ctx.fold.resolved_coalesces[cid]}"
            ctx.emit(w.token_id, ev.TokenFailed(reason="late_arrival", node=name, detail=detail))
            return
        cid = self._open(name, w.fork_id, w.row_index)
        if branch in ctx.fold.coalesces[cid].arrived:
            ctx.emit(w.token_id, ev.TokenFailed(reason="duplicate_branch", node=name, detail=branch))
            return
        ctx.emit(w.token_id, ev.TokenHeld(coalesce_id=cid, branch=branch))
        ctx.waiting[w.token_id] = w
        ctx.emit(cid, ev.BranchArrived(branch=branch, token_id=w.token_id))
        self.decide(cid, None)

    def lost(self, w: Work, reason: str) -> None:
        """A token left its path: if it was a branch on its way to a coalesce, that branch is lost."""
        if w.branch is None or w.fork_id is None:
            return
        name = self.ctx.nodes.coalesce_of_branch.get(w.branch)
        if name is None:
            return
        cid = coalesce_id(name, w.fork_id)
        if cid in self.ctx.fold.resolved_coalesces:
            return
        cid = self._open(name, w.fork_id, w.row_index)
        self.ctx.emit(cid, ev.BranchLost(branch=w.branch, token_id=w.token_id, reason=reason))
        self.decide(cid, None)

    def decide(self, cid: str, forced: str | None) -> None:
        """Merge or fail a coalesce if its policy says so. `forced` is "timeout" or
        "end_of_source": nothing more will arrive, so the coalesce must resolve now."""
        c = self.ctx.fold.coalesces[cid]
        cfg = self.ctx.nodes.coalesces[c.name]
        arrived, lost = c.arrived, c.lost
        pending = [b for b in c.branches if b not in arrived and b not in lost]
        policy = cfg.policy
        if forced is None:
            if policy == "require_all":
                if lost:
                    return self._fail(cid, "branch_lost")
                if not pending:
                    return self._merge(cid, "arrivals")
            elif policy == "first":
                if arrived:
                    return self._merge(cid, "arrivals")
                if not pending:
                    return self._fail(cid, "branch_lost")
            elif policy == "quorum":
                need = cfg.quorum_count or len(c.branches)
                if len(arrived) >= need:
                    return self._merge(cid, "arrivals")
                if len(arrived) + len(pending) < need:
                    return self._fail(cid, "quorum_not_met")
            elif not pending:  # best_effort
                if arrived:
                    return self._merge(cid, "arrivals")
                return self._fail(cid, "branch_lost")
            return None
        if policy == "quorum":
            if len(arrived) >= (cfg.quorum_count or len(c.branches)):
                return self._merge(cid, forced)
            return self._fail(cid, "quorum_not_met", forced)
        if policy == "best_effort":
            if arrived:
                return self._merge(cid, forced)
            return self._fail(cid, "timeout" if forced == "timeout" else "incomplete_branches", forced)
        # require_all, and first with nothing arrived (SETTINGS.md, "Coalesce semantics")
        return self._fail(cid, "incomplete_branches", forced)

    def _merge(self, cid: str, trigger: str) -> None:
        ctx = self.ctx
        c = ctx.fold.coalesces[cid]
        cfg = ctx.nodes.coalesces[c.name]
        works = {b: ctx.waiting[t] for b, t in c.arrived.items()}
        in_order = [b for b in c.branches if b in works]
        collisions: list[str] = []
        if cfg.merge == "nested":
            merged: Row = {b: works[b].row for b in in_order}
        elif cfg.merge == "select":
            chosen = cfg.select_branch or ""
            if chosen not in works:
                return self._fail(cid, "select_missing", None if trigger == "arrivals" else trigger)
            merged = dict(works[chosen].row)
        else:
            merged = {}
            for b in in_order:
                for k, v in works[b].row.items():
                    if k in merged and merged[k] != v and k not in collisions:
                        collisions.append(k)
                    merged[k] = v
        missing = [b for b in c.branches if b not in works]
        parents = [works[b].token_id for b in in_order]
        fork_id = next(iter(works.values())).fork_id or cid
        into = f"{fork_id}+{c.name}"
        ctx.emit(
            cid,
            ev.CoalesceMerged(arrived=in_order, missing=missing, into=into, trigger=trigger, collisions=collisions),
        )
        for t in parents:
            ctx.emit(t, ev.TokenCoalesced(coalesce_id=cid, into=into))
            del ctx.waiting[t]
        h = ctx.store(merged)
        at = ctx.nodes.dag.coalesce_output(c.name)
        ctx.emit(into, ev.TokenCreated(row_index=c.row_index, data_hash=h, at=at, parents=parents))
        ctx.stack.append(Work(into, merged, h, at, c.row_index))
        return None

    def _fail(self, cid: str, reason: str, forced: str | None = None) -> None:
        ctx = self.ctx
        c = ctx.fold.coalesces[cid]
        arrived = [b for b in c.branches if b in c.arrived]
        missing = [b for b in c.branches if b not in c.arrived]
        tokens = [c.arrived[b] for b in arrived]
        ctx.emit(cid, ev.CoalesceFailed(reason=reason, arrived=arrived, missing=missing, trigger=forced or ""))
        detail = "missing branches: " + ",".join(missing)
        for t in tokens:
            ctx.emit(t, ev.TokenFailed(reason=reason, node=c.name, detail=detail))
            del ctx.waiting[t]
