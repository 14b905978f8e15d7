"""PostgreSQL: the Annotate page's vote and next claim (db.queue.vote_and_claim_next) in one round trip.

Why: on PostgreSQL a vote + claim is 13 round trips (the pool's pre-ping, BEGIN, the pair's lock, the vote's
read, its inserts, the three claim tiers, the lease, the claimed pair's read, COMMIT), and with 8 annotator
processes on 2 cores the log is bound by the CPU that each round trip costs the client and the server. Here
the same work is one statement: a PL/pgSQL function does the vote and the claim, and the claimed pair's read
is joined to its result: 2 round trips with the pre-ping (bench/BENCHMARKS.md, "Preference log, session 8").

One definition of the rules: the function's queries are the Core statements of db/votes.py and db/queue.py
(the vote's read, the held lease, the two tiers' candidate scans, the re-count, the lease upsert), compiled
for PostgreSQL when the function is built; its refusals are reported as db.votes.refusal kinds; its decision
rule is db/consensus.py's, checked against `outcome` in the tests for every count vector of up to 3 votes
per outcome. The function is named after a hash of its source, so a changed statement builds a new function
on first use. What the function does in PL/pgSQL is only the control flow of `cast_vote` and of
NEXT_TASK_POLICIES, whose order it checks; a log whose role may not create functions, or a policy list it
does not know, uses the Core path.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import re
import weakref
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from db import queue, votes
from db.accounts import check_active
from db.models import UTCDateTime, int_or_none

log = logging.getLogger(__name__)
_DIALECT = postgresql.psycopg.dialect()
_RUNTIME = {"pid": "v_pid", "me": "v_me", "now": "v_now"}  # bind parameters given at call time
_READY: weakref.WeakKeyDictionary[sa.Engine, str | None] = weakref.WeakKeyDictionary()


def _sql(stmt: sa.ClauseElement, runtime: dict[str, str] | None = None) -> str:
    """A Core statement as PL/pgSQL text: call-time parameters become the function's variables, the
    statement's constants (a choice, a status, a LIMIT) are written in as literals."""
    names = {**_RUNTIME, **(runtime or {})}
    compiled = stmt.compile(dialect=_DIALECT)

    def value(m: re.Match) -> str:
        name = m.group(1)
        if name in names:
            return names[name]
        v = compiled.params[name]
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            raise TypeError(f"cannot write the constant {name}={v!r} of a hot-path statement into PL/pgSQL")
        return str(v) if isinstance(v, int) else "'" + v.replace("'", "''") + "'"

    return re.sub(r"%\((\w+)\)s", value, str(compiled))


def _outcome_sql() -> str:
    """db/consensus.py's rule in PL/pgSQL: (winner, rule, gap) from the four counts."""
    return """
  n := n_a + n_b + n_tie + n_both_bad;
  top := greatest(n_a, n_b, n_tie, n_both_bad);
  gap := CASE WHEN n > 0 THEN abs(n_a - n_b)::float8 / n ELSE 0 END;
  IF (n_a = top)::int + (n_b = top)::int + (n_tie = top)::int + (n_both_bad = top)::int > 1 THEN
    winner := 'tie'; rule := 'split';
  ELSE
    winner := CASE WHEN n_a = top THEN 'a' WHEN n_b = top THEN 'b' WHEN n_tie = top THEN 'tie' ELSE 'both_bad' END;
    rule := CASE WHEN top = n THEN 'unanimous' ELSE 'majority' END;
    IF winner = 'both_bad' THEN winner := 'tie'; rule := 'both_bad'; END IF;
  END IF;"""


def _tier_sql(candidates: sa.Select, tier: str) -> str:
    """One next-task tier: its candidates locked (SKIP LOCKED), each re-counted, the first open one leased."""
    return f"""
  IF claim_pair IS NULL THEN
    FOR v_cand IN {_sql(candidates)} LOOP
      SELECT q.* INTO rc FROM ({_sql(queue._RECOUNT, {"pid": "v_cand"})}) AS q;
      CONTINUE WHEN rc.status <> 'pending' OR rc.holders >= rc.votes_needed;
      {_sql(queue._LEASE["postgresql"], {"pair_id": "v_cand", "annotator_id": "v_me", "claimed_at": "v_now",
                                         "expires_at": "v_expires"})};
      claim_pair := v_cand; claim_expires := v_expires; claim_tier := '{tier}';
      EXIT;
    END LOOP;
  END IF;"""


def function_source(name: str) -> str:
    """CREATE FUNCTION for the vote + claim, with `name`."""
    return f"""CREATE OR REPLACE FUNCTION {name}(
    v_pid integer, v_me integer, v_choice varchar, v_shown_left varchar, v_latency integer, v_now timestamp,
    v_expires timestamp,
    OUT refused text, OUT refused_detail text, OUT vote_id integer, OUT decided boolean, OUT winner varchar,
    OUT gap float8, OUT rule varchar, OUT n_a integer, OUT n_b integer, OUT n_tie integer, OUT n_both_bad integer,
    OUT decided_at timestamp, OUT claim_pair integer, OUT claim_expires timestamp, OUT claim_tier text)
LANGUAGE plpgsql AS $fn$
DECLARE
  r record; rc record; h record; d record; v_found boolean; v_status varchar; v_cand integer; n integer;
  top integer;
BEGIN
  decided := false;
  -- the vote (db.votes.cast_vote): the pair locked, then what the vote decides on, read after the lock
  PERFORM q.id FROM ({_sql(votes._LOCK_ROW)}) AS q;
  SELECT q.* INTO r FROM ({_sql(votes._FOR_VOTE)}) AS q;
  v_found := FOUND;
  IF NOT EXISTS (SELECT 1 FROM annotators WHERE id = v_me AND active) THEN refused := 'account'; RETURN; END IF;
  IF NOT v_found THEN refused := 'no_pair'; RETURN; END IF;
  IF r.mine_id IS NOT NULL THEN
    IF r.mine_choice <> v_choice THEN refused := 'voted'; refused_detail := r.mine_choice; RETURN; END IF;
    vote_id := r.mine_id;
    SELECT * INTO d FROM decisions WHERE pair_id = v_pid;
    IF FOUND THEN
      decided := true; winner := d.winner; gap := d.gap; rule := d.rule; n_a := d.n_a; n_b := d.n_b;
      n_tie := d.n_tie; n_both_bad := d.n_both_bad; decided_at := d.decided_at;
    END IF;
  ELSE
    IF r.run_status = 'cancelled' OR r.status = 'cancelled' THEN
      refused := 'cancelled'; refused_detail := r.run_id; RETURN;
    END IF;
    v_status := r.status;
    IF v_status = 'pending' AND r.deadline IS NOT NULL AND r.deadline <= v_now THEN
      UPDATE pairs SET status = 'expired' WHERE id = v_pid;
      v_status := 'expired';
    END IF;
    IF v_status <> 'pending' THEN refused := 'closed'; refused_detail := v_status; RETURN; END IF;
    IF r.expires_at IS NULL OR r.expires_at <= v_now THEN refused := 'no_lease'; RETURN; END IF;
    INSERT INTO votes (pair_id, annotator_id, choice, shown_left, latency_ms, created_at, retracted)
      VALUES (v_pid, v_me, v_choice, v_shown_left, v_latency, v_now, false) RETURNING id INTO vote_id;
    IF v_choice = 'skip' THEN
      DELETE FROM claims WHERE pair_id = v_pid AND annotator_id = v_me;
    ELSIF r.decided IS NULL THEN
      n_a := r.n_a + (v_choice = 'a')::int; n_b := r.n_b + (v_choice = 'b')::int;
      n_tie := r.n_tie + (v_choice = 'tie')::int; n_both_bad := r.n_both_bad + (v_choice = 'both_bad')::int;
      IF n_a + n_b + n_tie + n_both_bad >= r.votes_needed THEN
        {_outcome_sql()}
        INSERT INTO decisions (pair_id, winner, gap, rule, n_a, n_b, n_tie, n_both_bad, decided_at)
          VALUES (v_pid, winner, gap, rule, n_a, n_b, n_tie, n_both_bad, v_now);
        UPDATE pairs SET status = 'decided' WHERE id = v_pid;
        decided := true; decided_at := v_now;
      ELSE
        n_a := NULL; n_b := NULL; n_tie := NULL; n_both_bad := NULL;
      END IF;
    END IF;
  END IF;
  -- the next claim (db.queue.NEXT_TASK_POLICIES, in order)
  SELECT q.* INTO h FROM ({_sql(queue._HELD)}) AS q;
  IF FOUND THEN
    claim_pair := h.id; claim_expires := h.expires_at; claim_tier := 'held_lease';
  END IF;{_tier_sql(queue._LIVE, "live_pairs")}{_tier_sql(queue._AUDIT_AND_QC, "audit_and_qc_pairs")}
END
$fn$"""


def _outcome_function(name: str) -> str:
    """The decision rule alone, as a function the tests compare with db.consensus.outcome."""
    return f"""CREATE OR REPLACE FUNCTION {name}(n_a integer, n_b integer, n_tie integer, n_both_bad integer,
    OUT winner varchar, OUT rule varchar, OUT gap float8)
LANGUAGE plpgsql IMMUTABLE AS $fn$
DECLARE n integer; top integer;
BEGIN{_outcome_sql()}
END
$fn$"""


def _names() -> tuple[str, str]:
    digest = hashlib.sha256(function_source("f").encode()).hexdigest()[:12]
    return f"dreamdpo_vote_claim_{digest}", f"dreamdpo_outcome_{digest}"


def _policies_known() -> bool:
    return queue.NEXT_TASK_POLICIES == (queue.held_lease, queue.live_pairs, queue.audit_and_qc_pairs)


def use_core_path(engine: sa.Engine) -> None:
    """Keep this engine's vote + claim on the Core statements (the benchmark's and the tests' comparison)."""
    _READY[engine] = None


def ready(engine: sa.Engine) -> str | None:
    """The function's name on this PostgreSQL log, built on first use (None: use the Core path)."""
    if engine in _READY:
        return _READY[engine]
    name = None
    if engine.dialect.name == "postgresql" and _policies_known():
        name, outcome_name = _names()
        try:
            with engine.begin() as conn:
                if conn.execute(sa.text("SELECT 1 FROM pg_proc WHERE proname = :n"), {"n": name}).first() is None:
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:n))"), {"n": name})
                    conn.exec_driver_sql(function_source(name))
                    conn.exec_driver_sql(_outcome_function(outcome_name))
        except sa.exc.ProgrammingError as e:  # no right to create functions: the Core path serves
            log.warning("vote + claim on the Core path: cannot create %s (%s)", name, str(e.orig).splitlines()[0])
            name = None
    _READY[engine] = name
    return name


_OUT = [sa.column(n, t) for n, t in (
    ("refused", sa.Text()), ("refused_detail", sa.Text()), ("vote_id", sa.Integer()), ("decided", sa.Boolean()),
    ("winner", sa.String()), ("gap", sa.Float()), ("rule", sa.String()), ("n_a", sa.Integer()),
    ("n_b", sa.Integer()), ("n_tie", sa.Integer()), ("n_both_bad", sa.Integer()), ("decided_at", UTCDateTime()),
    ("claim_pair", sa.Integer()), ("claim_expires", UTCDateTime()), ("claim_tier", sa.Text()))]


_ARGS = [sa.bindparam(n, type_=t) for n, t in (
    ("pid", sa.Integer()), ("me", sa.Integer()), ("choice", sa.String()), ("shown_left", sa.String()),
    ("latency_ms", sa.Integer()), ("now", UTCDateTime()), ("expires", UTCDateTime()))]


@functools.cache
def _call(name: str) -> sa.Select:
    """SELECT the function's result and, joined to it, the claimed pair's read (built once: composing it costs
    more CPU than running it)."""
    f = getattr(sa.func, name)(*_ARGS).table_valued(*_OUT).alias("f")
    claimed = queue.claimed_pair(f.c.claim_pair).lateral("c")
    return sa.select(f, claimed).select_from(f.outerjoin(claimed, sa.true()))


def vote_and_claim_next(engine: sa.Engine, name: str, pair_id: int, annotator_id: int, choice: str,
                        shown_left: str | None, latency_ms: int | None, lease_seconds: float,
                        now: datetime) -> tuple[dict | None, dict | None, tuple[str, str | None] | None]:
    """(the vote's result, the next claim, None), or (None, None, (refusal kind, detail)). One statement,
    committed on its own: an expiry written before a refusal is kept, as on the Core path."""
    params = dict(pid=pair_id, me=annotator_id, choice=choice, shown_left=shown_left,
                  latency_ms=int_or_none(latency_ms), now=now, expires=now + timedelta(seconds=lease_seconds))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        row = conn.execute(_call(name), params).mappings().one()
        if row["refused"] == "account":
            check_active(conn, annotator_id)  # the account's one-line error
        if row["refused"] is not None:
            return None, None, (row["refused"], row["refused_detail"])
        claim = None
        if row["claim_pair"] is not None and row["pair_id"] is None:
            # the claimed pair was posted after the statement began: its join saw the log as of then
            claim = queue._claim_dict(conn, row["claim_pair"], row["claim_expires"], row["claim_tier"])
        elif row["claim_pair"] is not None:
            claim = queue.claim_from({k: row[k] for k in queue.CLAIMED_KEYS}, row["claim_expires"], row["claim_tier"])
    decision = None
    if row["decided"]:
        decision = dict(pair_id=pair_id, **{k: row[k] for k in ("winner", "gap", "rule", "decided_at", "n_a", "n_b",
                                                               "n_tie", "n_both_bad")})
    result = dict(vote_id=row["vote_id"], decided=bool(row["decided"]), decision=decision)
    return result, claim, None
