"""The judge registry: one place that turns a judge spec string into a Judge.

A spec names one judge or joins model judges with '+' into an ensemble (judges/ensemble.py):

    none                      SDS, no judge
    toy-reward                the embedded toy world's reward model
    hpsv2[:WEIGHTS]           HPSv2 (weights: a path; default the local Hugging Face cache)
    imagereward[:WEIGHTS]     ImageReward (same)
    lmm:MODEL                 a local Qwen2-VL / Qwen2.5-VL, by cached hub id or folder (judges/lmm.py)
    lmm-api[:MODEL]           an OpenAI-compatible chat endpoint ($DREAMDPO_LMM_BASE_URL, _MODEL, _API_KEY)
    human                     people, through the preference log (built by the CLI, never here)
    hpsv2+imagereward+lmm:M   an ensemble of model judges

The CLI help, the config check and every error message read JUDGE_HELP and parse_spec, so the
list of judges lives here only. Loading is lazy: nothing heavy is imported until a judge is built.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from dreamdpo.errors import UserError

PLAIN = ("none", "toy-reward", "human")  # names that take no ':ARG'
WITH_ARG = {"hpsv2": False, "imagereward": False, "lmm": True, "lmm-api": False}  # name → ':ARG' required
NAMES = ("none", "toy-reward", "hpsv2", "imagereward", "lmm", "lmm-api", "human")
JUDGE_HELP = ("none (SDS) | toy-reward | hpsv2[:WEIGHTS] | imagereward[:WEIGHTS] | lmm:MODEL_ID_OR_PATH | "
              "lmm-api[:MODEL] | human; join model judges with + for an ensemble (e.g. hpsv2+imagereward)")


@dataclass(frozen=True)
class Member:
    """One judge of a spec: its kind ('hpsv2', 'lmm', ...) and its argument (weights, model id) or None."""

    kind: str
    arg: str | None = None

    @property
    def name(self) -> str:
        """The name logged with its votes (weights paths are not part of it)."""
        return f"{self.kind}:{self.arg}" if self.kind == "lmm" or (self.kind == "lmm-api" and self.arg) else self.kind


def parse_spec(spec: str, what: str = "judge") -> list[Member]:
    """'hpsv2+lmm:Qwen/Qwen2-VL-2B-Instruct' → [Member('hpsv2'), Member('lmm', 'Qwen/...')]; UserError if bad."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"the {what} is empty; choose one of: {JUDGE_HELP}")
    members = []
    for part in spec.split("+"):
        part = part.strip()
        kind, sep, arg = part.partition(":")
        if kind in PLAIN and not sep:
            members.append(Member(kind))
        elif kind in WITH_ARG and (arg or not sep):
            if WITH_ARG[kind] and not arg:
                raise UserError(f"{what} '{part}' needs a model: lmm:MODEL_ID_OR_PATH "
                                "(e.g. lmm:Qwen/Qwen2-VL-2B-Instruct)")
            members.append(Member(kind, arg or None))
        else:
            raise UserError(f"unknown {what} '{part}'; choose one of: {JUDGE_HELP}")
    if len(members) > 1:
        bad = [m.kind for m in members if m.kind in ("none", "human")]
        if bad:
            raise UserError(f"'{bad[0]}' cannot be part of a {what} ensemble ('{spec}'); join model judges only")
    return members


def check_spec(spec: str, what: str = "judge", allow_human: bool = True) -> None:
    """Validate a spec without loading anything (config validation)."""
    members = parse_spec(spec, what)
    if not allow_human and any(m.kind == "human" for m in members):
        raise UserError(f"the {what} must be a model judge or none, not 'human'")


def slug(spec: str) -> str:
    """A spec as a folder-name part: 'lmm:Qwen/Qwen2-VL-2B' → 'lmm-Qwen2-VL-2B'."""
    parts = []
    for m in parse_spec(spec):
        arg = re.sub(r"[^A-Za-z0-9._-]+", "-", (m.arg or "").rstrip("/").rsplit("/", 1)[-1]).strip("-")
        parts.append(f"{m.kind}-{arg}" if arg and m.kind.startswith("lmm") else m.kind)
    return "+".join(parts)


def load(spec: str, device=None, weights: str | None = None, *, lmm=None, max_calls: int | None = None,
         fallback: str | None = None):
    """Build the judge a spec names (None for 'none').

    weights: local weights for a single hpsv2/imagereward judge (the ':WEIGHTS' suffix wins).
    lmm: a judges.lmm.LMMConfig (questions, time-out, retries, concurrency) for lmm members.
    max_calls / fallback: the cost guard; after max_calls model calls (or when the judge is
    unreachable) the fallback spec judges instead (judges/ensemble.py: BudgetJudge)."""
    members = parse_spec(spec)
    if members[0].kind == "none":
        return None
    if any(m.kind == "human" for m in members):
        raise UserError("the human judge needs the preference log: run it through `dreamdpo run --judge human`")
    reward_members = [m for m in members if m.kind in ("hpsv2", "imagereward") and m.arg is None]
    if weights is not None and len(reward_members) > 1:
        raise UserError("judge_weights is ambiguous with several reward judges; give each its own: "
                        "--judge hpsv2:PATH+imagereward:PATH")
    names = _unique_names(members)
    built = [_load_member(m, n, device, weights, lmm) for m, n in zip(members, names, strict=True)]
    if len(built) == 1:
        judge = built[0]
    else:
        from dreamdpo.judges.ensemble import EnsembleJudge

        judge = EnsembleJudge(built, name=spec)
    has_lmm = any(m.kind.startswith("lmm") for m in members)
    if max_calls is not None or (has_lmm and fallback and fallback != "none"):
        from dreamdpo.judges.ensemble import BudgetJudge

        backup = load(fallback, device, weights, lmm=lmm) if fallback and fallback != "none" else None
        judge = BudgetJudge(judge, max_calls=max_calls, fallback=backup)
    return judge


def read_questions_from(judge, read) -> int:
    """Let every multimodal-LLM judge in `judge` (an ensemble's members, a guarded judge and its
    fallback, the model judge beside people) ask an admin's questions for the run: read(run_id) →
    the questions (db.runs.judge_questions), or None when the log cannot be read now. Returns how
    many LMM judges were found."""
    from dreamdpo.judges.lmm import LMMJudge

    found, todo = 0, [judge] if judge is not None else []
    while todo:
        j = todo.pop()
        if isinstance(j, LMMJudge):
            j.read_questions = read
            found += 1
        todo.extend(j.parts())
    return found


def _unique_names(members: list[Member]) -> list[str]:
    """Members' log names; a repeated judge gets '#2', '#3' so each vote on a pair stays apart."""
    seen: dict[str, int] = {}
    out = []
    for m in members:
        seen[m.name] = seen.get(m.name, 0) + 1
        out.append(m.name if seen[m.name] == 1 else f"{m.name}#{seen[m.name]}")
    return out


def _load_member(m: Member, name: str, device, weights: str | None, lmm):
    if m.kind == "toy-reward":
        from dreamdpo.toyworld.reward import ToyRewardJudge

        judge = ToyRewardJudge.load(device=device or "cpu")
    elif m.kind in ("hpsv2", "imagereward"):
        from dreamdpo.judges.reward import load_judge

        judge = load_judge(m.kind, device=device, weights=m.arg or weights)
    elif m.kind == "lmm":
        from dreamdpo.judges.lmm import LMMJudge

        judge = LMMJudge.local(m.arg, device=device, config=lmm, name=name)
    elif m.kind == "lmm-api":
        from dreamdpo.judges.lmm import LMMJudge

        judge = LMMJudge.api(m.arg, config=lmm)
    else:  # parse_spec let through a kind without a loader
        raise UserError(f"judge '{m.kind}' cannot be built here; choose one of: {JUDGE_HELP}")
    if m.kind == "lmm-api" and m.arg is None:  # the model came from $DREAMDPO_LMM_MODEL: log its name
        name = judge.name + name[len(m.name):]
    judge.name = name
    return judge
