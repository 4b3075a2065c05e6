"""Questions over the invented world: train / test / ood splits with controlled fact exposure.

How the splits are drawn (all seeded by ``config.seed``):

1. Every possible question skeleton (variant + parameters, e.g. "mentor2 from Tavo") is listed
   per (task, hops) bucket and shuffled.
2. Test (in-domain templates), then ood (different templates): buckets are visited round-robin
   (hop counts follow ``hop_weights``); every fact combination is asked at most once overall.
3. Train: a skeleton is taken only if its combination is new and each of its facts is in fewer
   than ``max_exposures`` training questions so far; among those, one that covers the most
   not-yet-covered facts of the evaluation questions is preferred.
4. An evaluation question with a fact that no training question states is replaced by a new
   combination of facts that training questions do state. So every test and ood question reuses
   training facts in a combination never seen in training.
5. Multiple-choice answers are spread evenly over the option letters within each (split, task);
   distractors come from the same chain (intermediate people, the asker's own town ...) and
   from other facts of the same type, so surface cues do not reveal the answer.

``meta`` of each record: variant, hops, template ("id-0", "ood-1", ...), params, facts (ids),
fact_exposures (train exposure count of each fact, aligned with ``facts``), answer_text.
"""
from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

from nesylib.files import read_jsonl, write_text
from nesylib.errors import ConfigError, DataError
from nesylib.synth.world import COLORS, TASKS, VARIANTS, SynthConfig, World, generate_world, solve

SPLITS = ("train", "test", "ood")
DESCRIPTIONS = {
    "synth_unit": "Convert an amount between invented units using the conversion facts of this world.",
    "synth_relation": "Follow the mentor relations between invented people to name the right person.",
    "synth_place": "Combine facts about where invented people live and which province each town lies in.",
    "synth_rule": "Apply the cloak rules of invented provinces to people carrying goods.",
}
_UNIT = (["How many {b}s are in {q} {a}s?", "Convert {q} {a}s into {b}s."],
         ["A cart holds {q} {a}s of grain. How many {b}s of grain is that?", "What is {q} {a}s written in {b}s?"])
_MENTOR = (["Who is {chain}?", "Name {chain}."],
           ["Who trained {trained}?", "Which person is {poss}?"])
# variant -> (in-domain templates, out-of-domain templates)
TEMPLATES = {
    "unit1": _UNIT, "unit2": _UNIT, "unit3": _UNIT,
    "mentor1": _MENTOR, "mentor2": _MENTOR, "mentor3": _MENTOR,
    "home": (["Where does {p} live?", "In which town does {p} live?"],
             ["Which town is home to {p}?", "{p} walks home. Which town does {p} reach?"]),
    "region": (["Which province is {t} in?", "In which province does {t} lie?"],
               ["{t} belongs to which province?", "A traveller stands in {t}. Which province is that?"]),
    "home_region": (["In which province does {p} live?", "Which province is the home town of {p} in?"],
                    ["Which province is home to {p}?", "{p} walks home. Which province does {p} reach?"]),
    "mentor_home": (["Where does the mentor of {p} live?", "In which town does the mentor of {p} live?"],
                    ["Which town is home to the person who trained {p}?",
                     "{p} visits the person who trained {p} at home. Which town is that?"]),
    "mentor_home_region": (["In which province does the mentor of {p} live?",
                            "Which province is the home town of the mentor of {p} in?"],
                           ["Which province is home to the person who trained {p}?",
                            "{p} visits the person who trained {p} at home. Which province is that?"]),
    "rule": (["In {v}, what color cloak must someone carrying {g} wear?",
              "Which cloak color does {v} require of anyone carrying {g}?"],
             ["A traveller with {g} enters {v}. Which cloak color must the traveller wear?",
              "Someone brings {g} into {v}. What cloak color is required?"]),
    "region_rule": (["Someone carrying {g} is in {t}. What color cloak must they wear?",
                     "Which cloak color must a person carrying {g} wear in {t}?"],
                    ["A traveller with {g} enters {t}. Which cloak color must the traveller wear?",
                     "Someone brings {g} into {t}. What cloak color is required?"]),
    "home_region_rule": (["{p} carries {g} at home. What color cloak must {p} wear?",
                          "Which cloak color must {p} wear when carrying {g} at home?"],
                         ["{p} walks home with {g}. Which cloak color must {p} wear?",
                          "{p} brings {g} home. What cloak color is required?"]),
}
_LETTERS = "ABCDEFGH"


def _skeletons(world: World, rng: random.Random) -> dict[tuple[str, int], list[tuple]]:
    """Every askable (variant, params, solution), bucketed by (task, hops) and shuffled."""
    c = world.config
    out: dict[tuple[str, int], list] = {(VARIANTS[v][0], VARIANTS[v][1]): [] for v in VARIANTS}

    def add(variant, params):
        try:
            sol = solve(world, variant, params)
        except KeyError:  # chain does not exist (a root has no mentor, a unit chain ends)
            return
        out[VARIANTS[variant]].append((variant, params, sol))

    for chain in world.unit_chains:
        for h in (1, 2, 3):
            for i in range(len(chain) - h):
                add(f"unit{h}", {"unit": chain[i], "quantity": rng.randint(c.quantity_min, c.quantity_max)})
    for p in world.persons:
        for v in ("mentor1", "mentor2", "mentor3", "home", "home_region", "mentor_home", "mentor_home_region"):
            add(v, {"person": p})
        for g in world.goods:
            add("home_region_rule", {"person": p, "good": g})
    for t in world.towns:
        add("region", {"town": t})
        for g in world.goods:
            add("region_rule", {"town": t, "good": g})
    for v in world.provinces:
        for g in world.goods:
            add("rule", {"province": v, "good": g})
    for bucket in out.values():
        rng.shuffle(bucket)
    return out


def _quotas(n: int, weights) -> dict[int, int]:
    """Split n over hops 1..3 by largest remainder (deterministic)."""
    total = sum(weights)
    raw = [n * w / total for w in weights]
    q = [int(r) for r in raw]
    for i in sorted(range(3), key=lambda i: (q[i] - raw[i], i))[: n - sum(q)]:
        q[i] += 1
    return {h + 1: q[h] for h in range(3)}


def _question(world: World, variant: str, params: dict, template: str) -> str:
    fields = dict(params)
    if "unit" in params:
        u = params["unit"]
        for _ in range(VARIANTS[variant][1]):
            u = world.next_unit[u]
        fields.update(a=params["unit"], b=u, q=params["quantity"])
    if "person" in params:
        h = VARIANTS[variant][1]
        p = params["person"]
        fields.update(p=p, chain="the mentor of " * h + p, trained="the person who trained " * (h - 1) + p,
                      poss=p + "'s mentor" * h)
    fields.update(t=params.get("town"), v=params.get("province"), g=params.get("good"))
    return template.format(**fields)


def _options(world: World, variant: str, params: dict, sol, rng: random.Random, n: int) -> list[str] | None:
    """n-1 distractors: lures from the chain and related facts first, then random of the same type."""
    if variant.startswith("unit"):
        return None
    if variant.startswith("mentor") and variant[-1].isdigit():
        pool = [x for x in world.persons if x != params["person"]]  # never the person asked about
        related = list(sol.lures) + ([world.mentor[sol.answer]] if sol.answer in world.mentor else [])
        related = [x for x in related if x != params["person"]]
    elif variant in ("home", "mentor_home"):
        pool = list(world.towns)
        related = list(sol.lures) + [t for t in world.towns if world.region[t] == world.region[sol.answer]]
    elif variant.endswith("rule"):
        pool = list(COLORS)
        g = params["good"]
        province = sol.facts[-1].split(":")[1]
        related = [world.rule[k] for k in world.rule if k.endswith(f":{g}") or k.startswith(f"{province}:")]
    else:
        pool = list(world.provinces)
        related = list(sol.lures)
    related = sorted(set(related) - {sol.answer})
    rng.shuffle(related)
    rest = sorted(set(pool) - {sol.answer} - set(related))
    rng.shuffle(rest)
    picks = related[: n - 1]
    return picks + rest[: n - 1 - len(picks)]


def _take(bucket: list, ok, score=None) -> tuple | None:
    """Pop the first skeleton that passes ``ok`` (with ``score``: the first of the highest score)."""
    best, best_score = None, -1
    for i, sk in enumerate(bucket):
        if ok(sk[2]):
            if score is None:
                return bucket.pop(i)
            s = score(sk[2])
            if s > best_score:
                best, best_score = i, s
    return None if best is None else bucket.pop(best)


def _too_small(split: str, key: tuple) -> ConfigError:
    return ConfigError(f"SynthConfig: the world is too small for {split} questions of task {key[0]} with "
                       f"{key[1]} hop(s); enlarge it (n_persons, n_towns, n_unit_chains, ...) or lower "
                       f"n_{split}_per_task / hop_weights")


def generate_benchmark(config: SynthConfig, world: World | None = None) -> dict[str, list[dict]]:
    """Build {"train", "test", "ood"} -> records (schema of nesylib.data.benchmarks) for ``config``.

    Evaluation questions are drawn first, then training questions that (within the exposure cap)
    prefer covering the facts the evaluation questions need; an evaluation question whose facts
    still miss from train is replaced by one whose facts are all in train. This order makes the
    construction succeed even in tiny worlds, where drawing train first leaves few unseen
    combinations of seen facts.
    """
    config.validate()
    world = world or generate_world(config)
    if world.config != config:
        raise ConfigError("generate_benchmark: world was generated from a different SynthConfig")
    rng = random.Random(f"{config.seed}-bench")
    buckets = _skeletons(world, rng)
    exposures: Counter = Counter()
    used: set[tuple] = set()  # fact combinations already asked, in any split
    chosen: dict[str, list[tuple]] = {s: [] for s in SPLITS}
    sizes = {"train": config.n_train_per_task, "test": config.n_test_per_task, "ood": config.n_ood_per_task}

    def fill(split, ok, score=None):
        quota = {(t, h): q for t in TASKS for h, q in _quotas(sizes[split], config.hop_weights).items()}
        while any(quota.values()):
            for key in [k for k in quota if quota[k]]:  # round-robin: tasks share facts fairly
                sk = _take(buckets[key], ok, score)
                if sk is None:
                    raise _too_small(split, key)
                used.add(tuple(sk[2].facts))
                if split == "train":
                    exposures.update(sk[2].facts)
                chosen[split].append(sk)
                quota[key] -= 1

    def fresh(sol):
        return tuple(sol.facts) not in used

    for split in ("test", "ood"):
        fill(split, fresh)
    needed = {f for split in ("test", "ood") for sk in chosen[split] for f in sk[2].facts}
    fill("train", lambda sol: fresh(sol) and all(exposures[f] < config.max_exposures for f in sol.facts),
         score=lambda sol: sum(f in needed and not exposures[f] for f in set(sol.facts)))
    for split in ("test", "ood"):
        for i, sk in enumerate(chosen[split]):
            if not all(exposures[f] for f in sk[2].facts):
                key = VARIANTS[sk[0]]
                repl = _take(buckets[key], lambda sol: fresh(sol) and all(exposures[f] for f in sol.facts))
                if repl is None:
                    raise _too_small(split, key)
                used.add(tuple(repl[2].facts))
                chosen[split][i] = repl
    return {split: _records(world, split, chosen[split], exposures, rng, config) for split in SPLITS}


def _records(world, split, items, exposures, rng, config) -> list[dict]:
    by_task = {t: [it for it in items if VARIANTS[it[0]][0] == t] for t in TASKS}
    offset = {"train": 0, "test": config.n_train_per_task,
              "ood": config.n_train_per_task + config.n_test_per_task}[split]
    kind = "ood" if split == "ood" else "id"
    out, start = [], 0
    for task in TASKS:
        rows = by_task[task]
        n = config.n_options
        # balanced answer letters; the start letter rotates so small splits stay balanced overall
        positions = [(start + i) % n for i in range(len(rows))]
        if rows and not rows[0][0].startswith("unit"):
            start += len(rows)
        rng.shuffle(positions)
        for i, ((variant, params, sol), pos) in enumerate(zip(rows, positions)):
            k = rng.randrange(2)
            question = _question(world, variant, params, TEMPLATES[variant][1 if kind == "ood" else 0][k])
            distractors = _options(world, variant, params, sol, rng, n)
            options, answer = [], sol.answer
            if distractors is not None:
                texts = distractors[:pos] + [sol.answer] + distractors[pos:]
                options = [f"({_LETTERS[j]}) {x}" for j, x in enumerate(texts)]
                question += "\nOptions:\n" + "\n".join(options)
                answer = f"({_LETTERS[pos]})"
            meta = {"variant": variant, "hops": len(sol.facts), "template": f"{kind}-{k}", "params": params,
                    "facts": sol.facts, "fact_exposures": [exposures[f] for f in sol.facts],
                    "answer_text": sol.answer}
            out.append({"uid": f"synth/{task}/{offset + i}", "dataset": "synth", "task": task, "split": split,
                        "question": question, "options": options, "answer": answer,
                        "task_description": DESCRIPTIONS[task], "meta": meta})
    return out


# ------------------------------------------------------------------------------------ files
def save_benchmark(benchmark: dict[str, list[dict]], path, world: World | None = None) -> Path:
    """Write ``path/{split}.jsonl`` (and ``path/world.json`` with the world) atomically."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for split, rows in benchmark.items():
        write_text(path / f"{split}.jsonl",
                      "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    if world is not None:
        write_text(path / "world.json", json.dumps(world.to_dict(), ensure_ascii=False, indent=1) + "\n")
    return path


def load_benchmark(path) -> dict[str, list[dict]]:
    """Read the splits written by ``save_benchmark``; a missing split file is an error."""
    path = Path(path)
    missing = [s for s in SPLITS if not (path / f"{s}.jsonl").is_file()]
    if missing:
        raise DataError(f"{path}: no {', '.join(s + '.jsonl' for s in missing)}; "
                        f"write them with nesylib.synth.save_benchmark")
    return {s: read_jsonl(path / f"{s}.jsonl") for s in SPLITS}


def load_world(path) -> World:
    """Read ``path/world.json`` written by ``save_benchmark(..., world=...)``."""
    f = Path(path) / "world.json"
    if not f.is_file():
        raise DataError(f"{f}: not found; save the benchmark with world=generate_world(config)")
    try:
        return World.from_dict(json.loads(f.read_text(encoding="utf-8")))
    except json.JSONDecodeError as e:
        raise DataError(f"{f}:{e.lineno}: malformed JSON ({e.msg})") from e


def describe(benchmark: dict[str, list[dict]]) -> dict:
    """Sizes, hop mix, train exposure histogram and the answer-letter spread, for reports."""
    train = benchmark.get("train", [])
    exp = Counter(f for r in train for f in r["meta"]["facts"])
    out = {"sizes": {s: len(r) for s, r in benchmark.items()},
           "facts_in_train": len(exp),
           "train_exposure_histogram": dict(sorted(Counter(exp.values()).items())),
           "mean_train_exposure": round(sum(exp.values()) / max(1, len(exp)), 3)}
    for s, rows in benchmark.items():
        out[f"hops_{s}"] = dict(sorted(Counter(r["meta"]["hops"] for r in rows).items()))
        out[f"answer_letters_{s}"] = dict(sorted(Counter(r["answer"] for r in rows if r["options"]).items()))
    return out
