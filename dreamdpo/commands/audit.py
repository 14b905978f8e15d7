"""`dreamdpo export` and `dreamdpo stats`: admin tools over the local log (no torch imported)."""
from __future__ import annotations

import argparse

import pandas as pd


def add_commands(subparsers) -> None:
    exp = subparsers.add_parser("export", help="export the preference log as a dataset")
    exp.add_argument("--format", required=True, choices=["pickapic", "trl", "jsonl"],
                     help="pickapic: image-generator preference training (DiffusionDPO, PickScore); "
                          "trl: a vision-language judge with trl.DPOTrainer; jsonl: everything, PNG files")
    exp.add_argument("--out", required=True, help="new or empty directory")
    exp.add_argument("--run", type=int, default=None, help="only this run")
    exp.add_argument("--since", default=None, help="only votes from this date on (YYYY-MM-DD)")
    exp.add_argument("--include-ties", action="store_true", help="keep ties, in their own split 'ties'")
    exp.add_argument("--humans-only", action="store_true", help="only people's votes (with --judges: and theirs)")
    exp.add_argument("--judges", default=None, metavar="NAME[,NAME]",
                     help="only these model judges' votes (with --humans-only: and people's)")
    exp.add_argument("--db", default=None, help="the log to read: a database URL or SQLite path (default: "
                     "$DREAMDPO_DB, else the local SQLite log); a missing log is an error, never created")
    exp.set_defaults(handler=run_export)

    st = subparsers.add_parser("stats", help="audit numbers: agreement, bias, τ, annotators (as on the Audit page)")
    st.add_argument("--run", type=int, default=None)
    st.add_argument("--judge", default=None)
    st.add_argument("--annotator", default=None)
    st.add_argument("--since", default=None)
    st.add_argument("--target", type=float, default=0.9, help="target agreement for the calibrated τ")
    st.add_argument("--db", default=None, help="the log to read (as for export); a missing log is an error")
    st.set_defaults(handler=run_stats)


def run_export(args: argparse.Namespace) -> int:
    from db import export
    from db.engine import connect, describe

    filters = export.ExportFilters(run_id=args.run, since=args.since, include_ties=args.include_ties,
                                   humans_only=args.humans_only, judges=export.parse_judges(args.judges))
    manifest = export.export_log(connect(args.db, create=False), args.format, args.out, filters)
    counts = manifest["counts"]
    rows = ", ".join(f"{k}: {v}" for k, v in counts["rows"].items()) or "no rows"
    left = ", ".join(f"{k}: {v}" for k, v in counts["excluded"].items()) or "nothing"
    print(f"exported {counts['comparisons']} comparisons from the log at {describe(args.db)} to {args.out} "
          f"({rows}; left out {left})")
    return 0


def run_stats(args: argparse.Namespace) -> int:
    from db.audit import AuditFilters, audit_data
    from db.engine import connect, describe

    engine = connect(args.db, create=False)
    data = audit_data(engine, AuditFilters(run_id=args.run, judge=args.judge, annotator=args.annotator,
                                           since=args.since, target_agreement=args.target))
    print(f"the log at {describe(args.db)}")
    print(format_audit(data))
    return 0


def _table(frame: pd.DataFrame, index: bool = True, empty: str = "(none)") -> str:
    return frame.to_string(index=index) if len(frame) else empty


def number(x: float) -> str:
    """A table's float with 3 decimals, never '-0.000'."""
    text = f"{x:.3f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def format_audit(data) -> str:
    """The Audit page's numbers as plain text."""
    s = data.summary
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", number,
                           "display.max_colwidth", 80):
        parts = [
            f"votes {s.n_votes}  pairs {s.n_pairs}  Fleiss' kappa {s.fleiss_kappa:.3f}  "
            f"Krippendorff's alpha {s.krippendorff_alpha:.3f}",
            "\n== judge-human agreement (ties dropped / all outcomes / Cohen's kappa, 95% bootstrap CI)",
            _table(s.agreement, False, "(no judged pairs with human votes)"),
            "\n== per run", _table(s.agreement_by_run, False),
            "\n== tau calibrated on people",
            "\n".join(f"{t.judge}: tau {t.tau:.3f} (agreement {t.agreement:.3f} on {t.n_pairs} pairs, "
                      f"target {t.target})" for t in s.taus) or "(no judges)",
            "\n== position bias: P(left chosen), binomial test vs 0.5",
            _table(pd.concat({"annotator": s.position_annotators, "judge": s.position_judges})),
            "\n== model judges asked in both orders (flip rate)", _table(s.judge_flips),
            "\n== judges asking each pair in both orders (order disagreement, P(first shown chosen))",
            _table(s.order_disagreement),
            "\n== agreement between judges on the same pairs", _table(s.judge_judge_agreement, False),
            "\n== annotators", _table(s.annotators, empty="(no human votes)"),
        ]
        if not s.annotators.empty and s.annotators["flagged"].any():
            flagged = s.annotators.loc[s.annotators["flagged"], "flag_reasons"]
            parts.append("FLAGGED: " + "; ".join(f"{n} ({r})" for n, r in flagged.items()))
        parts += ["\n== people's skips by reason", _table(s.skip_reasons, False, "(no skips)")]
        if len(data.ranking):
            parts += ["\n== Bradley-Terry ranking of candidates (95% bootstrap CI)", data.ranking.to_string()]
    return "\n".join(parts)
