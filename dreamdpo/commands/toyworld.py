"""`dreamdpo toyworld build-bank | train-reward | compare`: the embedded toy world's chores."""
from __future__ import annotations

import argparse


def add_commands(sub) -> None:
    p = sub.add_parser("toyworld", help="the embedded toy world (CPU prior, toy reward, SDS-vs-DreamDPO comparison)")
    tw = p.add_subparsers(dest="toyworld_command", required=True, metavar="ACTION")

    b = tw.add_parser("build-bank", help="render (or load from the cache) the toy prior's bank of renders",
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--cameras", type=int, default=96, help="bank cameras")
    b.add_argument("--cache", help="cache folder (default $DREAMDPO_HOME/toyworld or ~/.cache/dreamdpo/toyworld)")
    b.set_defaults(handler=build_bank_command)

    t = tw.add_parser("train-reward", help="train the toy reward model (a few minutes on a CPU)",
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", help="output folder (default: the shipped dreamdpo/assets/toy-reward)")
    t.add_argument("--steps", type=int, default=2000)
    t.add_argument("--minutes", type=float, default=10.0, help="safety cap: stop early after this long")
    t.set_defaults(handler=train_reward_command)

    c = tw.add_parser("compare", help="SDS vs DreamDPO (τ ablation, timestep and N-candidate variants) on the toy "
                                      "prompt suite; writes the table (mean, 95 %% bootstrap CI per prompt group) "
                                      "and a picture of the turntables",
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    c.add_argument("--prompts", nargs="+", help="prompts (default: the fixed suite, dreamdpo/toyworld/compare.py)")
    c.add_argument("--groups", nargs="+", choices=["single", "two", "relation"],
                   help="only the suite's prompts of these groups (default: all)")
    c.add_argument("--seeds", type=int, default=2, help="number of seeds per prompt and method")
    c.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed .. first-seed + seeds - 1")
    c.add_argument("--steps", type=int, help="optimization steps per run (default: the toy default)")
    c.add_argument("--methods", nargs="+", help="subset of the methods (default: all)")
    c.add_argument("--test-views", type=int, default=8, help="turntable views per run that the evaluator scores")
    c.add_argument("--out", default="outputs/compare-toy", help="runs, table.md, grid.png and rows.json go here")
    c.add_argument("--workers", type=int, default=1, help="parallel runs (processes of one thread each)")
    c.add_argument("--device", default="cpu")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.add_argument("--json", help="also write the per-run rows to this JSON file")
    c.add_argument("overrides", nargs="*", metavar="key=value", help="RunConfig overrides for every run")
    c.set_defaults(handler=compare_command)


def build_bank_command(args) -> int:
    from dreamdpo.toyworld.bank import BankConfig, build_bank

    bank = build_bank(BankConfig(n_cameras=args.cameras, seed=args.seed), cache=args.cache)
    size = bank.path.stat().st_size / 1e6 if bank.path else 0.0
    how = "loaded from cache" if bank.loaded_from_cache else f"built in {bank.build_seconds:.1f} s"
    print(f"toy bank: {len(bank.cameras)} cameras, {how}: {bank.path} ({size:.1f} MB)")
    return 0


def train_reward_command(args) -> int:
    import json

    from dreamdpo.toyworld.reward import train_reward

    metrics = train_reward(seed=args.seed, out_dir=args.out, minutes=args.minutes, steps=args.steps)
    print(json.dumps(metrics, indent=2))
    return 0


def compare_command(args) -> int:
    import json
    from pathlib import Path

    from dreamdpo.toyworld.compare import report, run_comparison, suite, table

    rows = run_comparison(prompts=args.prompts or suite(args.groups),
                          seeds=list(range(args.first_seed, args.first_seed + args.seeds)), steps=args.steps,
                          methods=args.methods, out_dir=args.out, test_views=args.test_views,
                          overrides=args.overrides, workers=args.workers, device=args.device,
                          progress=not args.no_progress)
    paths = report(rows, args.out)
    print(table(rows))
    print(f"table: {paths['table']}\npicture: {paths['grid']}\nruns: {paths['rows']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, ensure_ascii=False))
    return 0
