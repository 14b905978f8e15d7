"""`dreamdpo submit` (queue runs: prompts × configs × seeds) and `dreamdpo worker` (claim and run them)."""
from __future__ import annotations

import shlex
from pathlib import Path

from dreamdpo.errors import UserError


def add_commands(sub) -> None:
    from db.run_queue import DEFAULT_BEAT_S, DEFAULT_DEAD_AFTER_S

    p = sub.add_parser("submit", help="queue runs in the log for `dreamdpo worker` processes: one prompt, or a "
                                      "prompt file × configs × seeds; prints their ids")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help="one text prompt, e.g. \"a red cube\"")
    what.add_argument("--prompts", metavar="FILE", help="a text file, one prompt a line (blank lines and "
                                                        "lines starting with # are skipped)")
    p.add_argument("--config", action="append", metavar="SET",
                   help="one config of the sweep: a YAML file of RunConfig keys, or key=value overrides in one "
                        "quoted string (\"dpo.tau=0.01 judge=none\"); repeat for several (default: one, the defaults)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], metavar="SEED", help="seeds of every run")
    p.add_argument("--priority", type=int, default=0, help="higher is claimed first")
    p.add_argument("--storage", help="fsspec URL under which each run gets its folder (checkpoints, outputs); "
                                     "every worker must reach it: file:///shared/..., s3://bucket/prefix "
                                     "(default: file://<data dir>/runs, for workers of this host)")
    p.add_argument("--db", help="preference log URL or SQLite path (default $DREAMDPO_DB or the default log)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides for every run, e.g. steps=300 backbone=toy")
    p.set_defaults(handler=submit_command)

    w = sub.add_parser("worker", help="claim queued runs from the log and run them, one process per GPU, "
                                      "until stopped (Ctrl-C or SIGTERM puts its run back in the queue)")
    w.add_argument("--db", help="preference log URL or SQLite path (default $DREAMDPO_DB or the default log); "
                                "workers on several hosts need PostgreSQL")
    w.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (one worker per GPU) | auto")
    w.add_argument("--beat-s", type=float, default=DEFAULT_BEAT_S, help="heartbeat period in seconds")
    w.add_argument("--dead-after-s", type=float, default=DEFAULT_DEAD_AFTER_S,
                   help="a worker silent this long is dead: its run goes back to the queue")
    w.add_argument("--poll-s", type=float, default=2.0, help="how often an idle worker looks for queued runs")
    w.add_argument("--max-runs", type=int, help="stop after this many runs")
    w.add_argument("--once", action="store_true", help="run at most one queued run, then stop")
    w.add_argument("--until-empty", action="store_true", help="stop when no run is queued")
    w.add_argument("--scratch", help="local folder for runs in progress (default: the system's temp folder)")
    w.add_argument("--name", help="the worker's name in the log (default host:pid:device)")
    w.add_argument("--progress", action="store_true", help="show a progress bar per run")
    w.set_defaults(handler=worker_command)


# ----------------------------------------------------------------------------- submit


def read_prompts(path: str) -> list[tuple[int, str]]:
    """(line number, prompt) of a prompt file: one a line; blank lines and # comments skipped."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise UserError(f"prompt file {path} does not exist") from None
    except (IsADirectoryError, UnicodeDecodeError):
        raise UserError(f"prompt file {path} is not a text file; give one prompt a line") from None
    except OSError as e:
        raise UserError(f"cannot read prompt file {path} ({e.strerror})") from None
    prompts = [(i, line.strip()) for i, line in enumerate(text.splitlines(), 1)
               if line.strip() and not line.strip().startswith("#")]
    if not prompts:
        raise UserError(f"prompt file {path} holds no prompt; write one prompt a line")
    return prompts


def config_sets(sets: list[str] | None) -> list[tuple[str, str | None, list[str]]]:
    """Each --config as (label, YAML path or None, overrides). A value naming a file (or ending in
    .yaml/.yml) is a YAML file; otherwise key=value overrides separated by spaces."""
    out: list[tuple[str, str | None, list[str]]] = []
    for raw in sets or [""]:
        raw = raw.strip()
        if not raw:
            out.append(("default", None, []))
        elif raw.endswith((".yaml", ".yml")) or Path(raw).is_file():
            out.append((Path(raw).stem, raw, []))
        else:
            try:
                items = shlex.split(raw)
            except ValueError as e:
                raise UserError(f"--config {raw!r} is not key=value overrides ({e})") from None
            out.append((" ".join(items), None, items))
    return out


def check_prompt(cfg) -> None:
    """What the run's backbone would refuse at its start, refused now: the toy world's vocabulary
    (the toy prior's encode_prompt). Other backbones read any text."""
    if cfg.backbone == "toy":
        from dreamdpo.toyworld.vocab import parse_prompt, parse_words

        parse_prompt(cfg.prompt)
        if cfg.negative_prompt.strip():
            parse_words(cfg.negative_prompt)


def build_queue(prompts: list[tuple[str, str]], sets, seeds: list[int], overrides: list[str]):
    """Every run of the sweep (prompts × configs × seeds), each checked as `dreamdpo run` checks its
    config: the first bad one is a one-line error naming where it came from."""
    from db.run_queue import QueuedRun
    from dreamdpo.config import load_config

    queued = []
    for where, prompt in prompts:
        for label, yaml_path, items in sets:
            for seed in seeds:
                try:
                    cfg = load_config(yaml_path, {"prompt": prompt, "seed": seed}, [*overrides, *items])
                    check_prompt(cfg)
                except UserError as e:
                    raise UserError(f"{where} (config {label!r}, seed {seed}): {e}") from None
                if cfg.out:
                    raise UserError(f"{where}: a queued run's folder is its storage URL; drop out={cfg.out}")
                queued.append(QueuedRun(
                    prompt=cfg.prompt, config=cfg.to_dict(), backbone=cfg.backbone, name=label,
                    question=cfg.human.question,
                    judge_policy={"judge": cfg.judge, "assist_judge": cfg.assist_judge, **cfg.to_dict()["human"]}))
    return queued


def submit_command(args) -> int:
    from db.engine import connect, data_dir, describe
    from db.run_queue import submit_runs
    from dreamdpo.storage import check_reachable

    if args.prompts:
        prompts = [(f"{args.prompts} line {i}", p) for i, p in read_prompts(args.prompts)]
    else:
        prompts = [("--prompt", args.prompt)]
    queued = build_queue(prompts, config_sets(args.config), args.seeds, args.overrides)
    storage = args.storage or (data_dir() / "runs").resolve().as_uri()
    check_reachable(storage)
    engine = connect(args.db)
    ids = submit_runs(engine, queued, storage, priority=args.priority)
    for run_id, q in zip(ids, queued):
        print(f"run {run_id}: {q.prompt!r} seed {q.config['seed']} config {q.name!r}")
    print(f"queued {len(ids)} run(s) in {describe(args.db)} (priority {args.priority}, storage {storage}); "
          "start workers with `dreamdpo worker`")
    print("ids: " + " ".join(map(str, ids)))
    return 0


# ----------------------------------------------------------------------------- worker


def worker_command(args) -> int:
    from dreamdpo.worker import Worker, WorkerConfig

    cfg = WorkerConfig(db=args.db, device=args.device, beat_s=args.beat_s, dead_after_s=args.dead_after_s,
                       poll_s=args.poll_s, scratch=args.scratch, name=args.name, progress=args.progress,
                       max_runs=1 if args.once else args.max_runs, until_empty=args.until_empty or args.once)
    Worker(cfg, say=lambda text: print(text, flush=True)).serve()
    return 0
