"""`dreamdpo run`: one optimization from a prompt; every judged pair goes to the preference log."""
from __future__ import annotations

import argparse

from dreamdpo.judges import JUDGE_HELP


def add_commands(sub) -> None:
    p = sub.add_parser("run", help="optimize a 3D object from a text prompt (DreamDPO, or SDS with --judge none)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--prompt", help="text prompt, e.g. \"a red cube\"")
    p.add_argument("--backbone", help="'toy' (embedded, CPU) or a diffusers model id / local path, "
                                      "e.g. stabilityai/stable-diffusion-2-1-base")
    p.add_argument("--judge", help=JUDGE_HELP.replace("%", "%%"))
    p.add_argument("--steps", type=int)
    p.add_argument("--tau", type=float, help="threshold on the judge's score gap (judge units)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--out", help="output directory (default outputs/<run-name>)")
    p.add_argument("--config", help="YAML file with any RunConfig keys")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--db",
                   help="preference log URL or SQLite path (default $DREAMDPO_DB or ./dreamdpo-data/log.sqlite)")
    p.add_argument("--no-log", action="store_true", help="do not write judged pairs to the preference log")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. dpo.tau=0.01 steps=300")
    p.set_defaults(handler=run_command)


def run_command(args) -> int:
    from dreamdpo.config import load_config
    from dreamdpo.optimize import optimize

    flags = {"prompt": args.prompt, "backbone": args.backbone, "judge": args.judge, "steps": args.steps,
             "seed": args.seed, "device": args.device, "out": args.out}
    if args.tau is not None:
        flags["dpo"] = {"tau": args.tau}
    cfg = load_config(args.config, flags, args.overrides)
    judge, recorder = prepare_run(cfg, db_url=None if args.no_log else (args.db or ""), resume=args.resume)
    if judge is not None and cfg.judge != "human":
        from dreamdpo.judges.ensemble import run_estimate

        print(run_estimate(judge, cfg))
    result = optimize(cfg, judge=judge, recorder=recorder, resume=args.resume, progress=not args.quiet)
    print(f"{result.status}: {result.steps_done} steps; outputs in {result.out_dir}")
    for name, path in result.outputs.items():
        if isinstance(path, str):
            print(f"  {name}: {path}")
    if recorder.run_id is not None:
        print(f"  logged as run {recorder.run_id}")
    return 0 if result.status == "finished" else 1


def prepare_run(cfg, db_url: str | None, resume: bool):
    """The judge and the recorder of a run. db_url None → no log; "" → the default log.

    The run's row is created by the recorder once the run has passed every check; on --resume the
    id kept in <out>/log.json names it, and the recorder checks it is this run."""
    import json

    from dreamdpo.optimize import load_run_judge, resolve_device
    from dreamdpo.recording import DbRecorder, Recorder

    device = resolve_device(cfg.device)
    if db_url is None:
        if cfg.judge == "human":
            from dreamdpo.errors import UserError

            raise UserError("--judge human needs the preference log; drop --no-log")
        return load_run_judge(cfg, device), Recorder()

    from db.engine import connect

    engine = connect(db_url or None)
    link = cfg.out_dir / "log.json"
    run_id = None
    if resume and link.exists():
        try:
            run_id = int(json.loads(link.read_text())["run_id"])
        except (ValueError, KeyError, TypeError):
            from dreamdpo.errors import UserError

            raise UserError(f"{link} is damaged; it should hold the run's id in the log, e.g. "
                            '{"run_id": 3}') from None
    return logged_run_judge(cfg, engine, device), DbRecorder(engine, run_id=run_id, outage_s=cfg.log_outage_s)


def logged_run_judge(cfg, engine, device):
    """The judge of a run that writes to the log: people (with the assist model) or the model judge,
    reading an admin's extra questions from the log (`dreamdpo run` and `dreamdpo worker`)."""
    from dreamdpo.judges import read_questions_from
    from dreamdpo.optimize import load_model_judge, load_run_judge

    if cfg.judge == "human":
        from dreamdpo.judges.human import HumanJudge

        assist = load_model_judge(cfg.assist_judge, device, cfg.judge_weights, lmm=cfg.lmm)
        judge = HumanJudge(engine, cfg.human, model_judge=assist, seed=cfg.seed, outage_s=cfg.log_outage_s)
    else:
        judge = load_run_judge(cfg, device)
    read_questions_from(judge, admin_questions_reader(engine))
    return judge


def admin_questions_reader(engine):
    """read(run_id) → the extra questions an admin wrote for the run's LMM judge in the app
    (db.runs.judge_questions), or None while the log is unreachable (the judge keeps the last ones)."""
    from db import runs
    from db.engine import is_transient

    def read(run_id: int) -> list[str] | None:
        try:
            return runs.judge_questions(engine, run_id)
        except Exception as e:
            if not is_transient(e):
                raise
            return None

    return read
