"""The invented world behind the synthetic benchmark: its parameters, its facts, and a solver.

Every name is built from random syllables, so no pretrained model can know a single fact.
Fact kinds (ids in brackets):

    unit    [unit:<u>]            "1 zorel = 3 kabins."          unit u converts into the next
                                                                unit of its chain by factor k
    mentor  [mentor:<p>]          "Mirel is the mentor of Tavo."  every non-root person has one
    home    [home:<p>]            "Tavo lives in Darvik."
    region  [region:<t>]          "Darvik lies in the province of Ulmar."
    rule    [rule:<v>:<g>]        "In Ulmar, anyone carrying salt must wear a red cloak."

``solve`` answers a question skeleton (task, variant, params) from the facts and returns the
facts it needed, the reasoning steps and the answer; the generator and the programmatic teacher
both use it, so a rationale can never disagree with its gold answer.

SynthConfig defaults (fixed before any experiment was run; do not tune them on results):

    n_train/test/ood_per_task = 120 / 48 / 40   4 tasks -> 480 train, 192 test, 160 ood: a train
                                  set a 2-core CPU trains on in under ten minutes per epoch
                                  (calibration.md: <= 1.1 s per item-epoch; these sequences are
                                  under 240 tokens), and eval sets that resolve differences of
                                  about 10 pp (95 % CI half-width ~7 pp at 50 % accuracy).
    max_exposures = 3           a fact is stated in at most 3 training questions (and their
                                  rationales), so it is sparse knowledge: the papers' premise,
                                  by construction.
    hop_weights = .35/.40/.25   share of questions needing 1, 2 or 3 facts: most need a chain.
    n_persons 160, n_roots 6,   sized so that every (task, hops) bucket has enough questions
    n_towns 72, n_provinces 16, under the exposure cap (homes and regions serve two families)
    n_goods 8,                  and enough unused fact combinations for test and ood (checked:
    n_unit_chains 40 x 5 units  seeds 0-99 all build). Seed 42 gives 674 facts, 587 of them in
                                  train: 347 in one training question, 155 in two, 85 in three.
    homes and regions           assigned evenly (each town has 2-3 residents, each province
                                  4-5 towns), so no answer is a priori more frequent.
    factor 2-4, quantity 2-5    unit arithmetic stays in small integers (<= 320): the benchmark
                                  tests knowledge, not a 135M model's multiplication.
    n_options = 4               multiple-choice families: chance is 25 %.
    seed = 42
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field

from nesylib.errors import ConfigError

TASKS = ("synth_unit", "synth_relation", "synth_place", "synth_rule")
GOODS = ("salt", "iron", "silk", "wool", "amber", "glass", "copper", "spice")
COLORS = ("red", "blue", "green", "grey", "white", "black", "yellow", "brown")
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
           "br", "dr", "kr", "tr", "th", "sh")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "n", "r", "l", "m", "k", "th")


@dataclass(frozen=True)
class SynthConfig:
    """Benchmark parameters; see the module docstring for why each default is what it is."""
    seed: int = 42
    n_train_per_task: int = 120
    n_test_per_task: int = 48
    n_ood_per_task: int = 40
    max_exposures: int = 3
    hop_weights: tuple = (0.35, 0.40, 0.25)
    n_persons: int = 160
    n_roots: int = 6
    n_towns: int = 72
    n_provinces: int = 16
    n_goods: int = 8
    n_unit_chains: int = 40
    unit_chain_len: int = 5
    factor_min: int = 2
    factor_max: int = 4
    quantity_min: int = 2
    quantity_max: int = 5
    n_options: int = 4

    @classmethod
    def smoke(cls, seed: int = 42) -> "SynthConfig":
        """A tiny world for tests: 4 x (12 train, 6 test, 5 ood) questions (seeds 0-99 all build)."""
        return cls(seed=seed, n_train_per_task=12, n_test_per_task=6, n_ood_per_task=5,
                   n_persons=40, n_roots=3, n_towns=18, n_provinces=4, n_goods=4, n_unit_chains=6,
                   unit_chain_len=6)

    def validate(self) -> "SynthConfig":
        def need(ok: bool, name: str, what: str):
            if not ok:
                raise ConfigError(f"SynthConfig.{name}={getattr(self, name)!r}: {what}")
        for name in ("n_train_per_task", "n_test_per_task", "n_ood_per_task", "max_exposures",
                     "n_roots", "n_provinces", "n_goods", "n_unit_chains"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, name,
                 "must be an integer >= 1")
        need(len(self.hop_weights) == 3 and all(w >= 0 for w in self.hop_weights)
             and sum(self.hop_weights) > 0, "hop_weights", "must be 3 non-negative weights (1, 2, 3 hops)")
        need(self.n_persons > self.n_roots + 3, "n_persons", "must exceed n_roots + 3")
        need(self.n_towns >= max(self.n_provinces, self.n_options), "n_towns",
             "must be >= n_provinces and >= n_options")
        need(self.n_goods <= len(GOODS), "n_goods", f"must be <= {len(GOODS)}")
        need(self.unit_chain_len >= 4, "unit_chain_len", "must be >= 4 (3-hop conversions)")
        need(1 <= self.factor_min <= self.factor_max, "factor_max", "needs 1 <= factor_min <= factor_max")
        need(1 <= self.quantity_min <= self.quantity_max, "quantity_max",
             "needs 1 <= quantity_min <= quantity_max")
        need(2 <= self.n_options <= min(len(COLORS), self.n_provinces), "n_options",
             "must be >= 2 and <= min(8 colors, n_provinces)")
        return self

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "SynthConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"SynthConfig: unknown parameter(s) {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _names(rng: random.Random, n: int) -> list[str]:
    """n distinct two-syllable names, none a prefix of another (keeps word matching exact)."""
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        s = (rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_ONSETS) + rng.choice(_VOWELS)
             + rng.choice(_CODAS))
        if s in seen or any(s.startswith(o) or o.startswith(s) for o in seen):
            continue
        seen.add(s)
        out.append(s)
    return out


@dataclass
class World:
    """All entities and facts. ``facts`` maps fact id -> sentence (ending with '.')."""
    config: SynthConfig
    persons: list[str]
    towns: list[str]
    provinces: list[str]
    goods: list[str]
    mentor: dict[str, str]            # pupil -> mentor
    home: dict[str, str]              # person -> town
    region: dict[str, str]            # town -> province
    rule: dict[str, str]              # "province:good" -> cloak colour
    unit_chains: list[list[str]]
    factor: dict[str, int]            # unit -> factor into the next unit of its chain
    facts: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        self.next_unit = {c[i]: c[i + 1] for c in self.unit_chains for i in range(len(c) - 1)}
        f = {}
        for u, v in self.next_unit.items():
            f[f"unit:{u}"] = f"1 {u} = {self.factor[u]} {v}s."
        for p, m in self.mentor.items():
            f[f"mentor:{p}"] = f"{m} is the mentor of {p}."
        for p, t in self.home.items():
            f[f"home:{p}"] = f"{p} lives in {t}."
        for t, v in self.region.items():
            f[f"region:{t}"] = f"{t} lies in the province of {v}."
        for key, c in self.rule.items():
            v, g = key.split(":")
            f[f"rule:{key}"] = f"In {v}, anyone carrying {g} must wear a {c} cloak."
        self.facts = f

    def to_dict(self) -> dict:
        return {"config": self.config.to_dict(), "persons": self.persons, "towns": self.towns,
                "provinces": self.provinces, "goods": self.goods, "mentor": self.mentor,
                "home": self.home, "region": self.region, "rule": self.rule,
                "unit_chains": self.unit_chains, "factor": self.factor, "facts": self.facts}

    @classmethod
    def from_dict(cls, d: dict) -> "World":
        d = dict(d)
        d.pop("facts", None)  # derived
        d["config"] = SynthConfig.from_dict(d["config"])
        return cls(**d)


def generate_world(config: SynthConfig) -> World:
    """Build the world for ``config`` deterministically from ``config.seed``."""
    c = config.validate()
    rng = random.Random(f"{c.seed}-world")
    n_units = c.n_unit_chains * c.unit_chain_len
    names = _names(rng, c.n_persons + c.n_towns + c.n_provinces + n_units)
    proper = [n.capitalize() for n in names[: c.n_persons + c.n_towns + c.n_provinces]]
    persons = proper[: c.n_persons]
    towns = proper[c.n_persons: c.n_persons + c.n_towns]
    provinces = proper[c.n_persons + c.n_towns:]
    units = names[len(proper):]
    # Mentors come from the few persons just before: long lineages, so 3-hop chains abound.
    mentor = {persons[i]: persons[rng.randrange(max(0, i - 8), i)] for i in range(c.n_roots, c.n_persons)}
    # Balanced assignments: no town or province is a more likely answer than another.
    homes = [towns[i % c.n_towns] for i in range(c.n_persons)]
    rng.shuffle(homes)
    home = dict(zip(persons, homes))
    slots = [provinces[i % c.n_provinces] for i in range(c.n_towns)]
    rng.shuffle(slots)
    region = dict(zip(towns, slots))
    goods = list(GOODS[: c.n_goods])
    rule = {}
    for v in provinces:  # distinct colours within a province: the answer needs province AND good
        for g, col in zip(goods, rng.sample(COLORS, c.n_goods)):
            rule[f"{v}:{g}"] = col
    chains = [units[i * c.unit_chain_len:(i + 1) * c.unit_chain_len] for i in range(c.n_unit_chains)]
    factor = {u: rng.randint(c.factor_min, c.factor_max) for ch in chains for u in ch[:-1]}
    return World(c, persons, towns, provinces, goods, mentor, home, region, rule, chains, factor)


# ------------------------------------------------------------------------------------ solver
@dataclass
class Solution:
    facts: list[str]       # fact ids, in reasoning order
    steps: list[str]       # one sentence per step, stating the fact (and any arithmetic)
    answer: str            # the answer text (a name, a colour or an integer)
    lures: list[str]       # wrong answers a partial or misdirected chain gives (same type as answer)


# variant -> (task, hops); the variant fixes which fact kinds are chained
VARIANTS = {
    "unit1": ("synth_unit", 1), "unit2": ("synth_unit", 2), "unit3": ("synth_unit", 3),
    "mentor1": ("synth_relation", 1), "mentor2": ("synth_relation", 2), "mentor3": ("synth_relation", 3),
    "home": ("synth_place", 1), "region": ("synth_place", 1), "home_region": ("synth_place", 2),
    "mentor_home": ("synth_place", 2), "mentor_home_region": ("synth_place", 3),
    "rule": ("synth_rule", 1), "region_rule": ("synth_rule", 2), "home_region_rule": ("synth_rule", 3),
}


def _mentors(world: World, p: str, hops: int) -> list[str]:
    out = [p]
    for _ in range(hops):
        if out[-1] not in world.mentor:
            raise KeyError(f"{out[-1]} has no mentor")
        out.append(world.mentor[out[-1]])
    return out


def solve(world: World, variant: str, params: dict) -> Solution:
    """Answer a question skeleton from the world's facts; KeyError if the chain does not exist."""
    if variant not in VARIANTS:
        raise ConfigError(f"variant={variant!r}: expected one of {sorted(VARIANTS)}")
    F = world.facts
    if variant.startswith("unit"):
        hops = VARIANTS[variant][1]
        u, q = params["unit"], params["quantity"]
        facts, steps, amounts = [], [], []
        for _ in range(hops):
            v, k = world.next_unit[u], world.factor[u]
            facts.append(f"unit:{u}")
            steps.append(f"{F['unit:' + u][:-1]}, so {q} {u}s = {q} * {k} = {q * k} {v}s.")
            q, u = q * k, v
            amounts.append(str(q))
        return Solution(facts, steps, amounts[-1], amounts[:-1])
    if variant.startswith("mentor") and variant[-1].isdigit():
        line = _mentors(world, params["person"], VARIANTS[variant][1])
        facts = [f"mentor:{p}" for p in line[:-1]]
        # lures: the intermediate mentors (never the person named in the question)
        return Solution(facts, [F[f] for f in facts], line[-1], line[1:-1])
    if variant == "region":
        t = params["town"]
        return Solution([f"region:{t}"], [F[f"region:{t}"]], world.region[t], [])
    if variant == "rule" or variant == "region_rule" or variant == "home_region_rule":
        g = params["good"]
        facts = []
        if variant == "rule":
            v = params["province"]
        else:
            t = params["town"] if variant == "region_rule" else world.home[params["person"]]
            if variant == "home_region_rule":
                facts.append(f"home:{params['person']}")
            facts.append(f"region:{t}")
            v = world.region[t]
        facts.append(f"rule:{v}:{g}")
        if f"rule:{v}:{g}" not in F:
            raise KeyError(f"no rule for {v}:{g}")
        return Solution(facts, [F[f] for f in facts], world.rule[f"{v}:{g}"], [])
    # place variants: [mentor] -> home [-> region]
    person = params["person"]
    line = _mentors(world, person, 1) if variant.startswith("mentor") else [person]
    facts = [f"mentor:{person}"] if len(line) == 2 else []
    who = line[-1]
    town = world.home[who]
    facts.append(f"home:{who}")
    if variant.endswith("region"):
        facts.append(f"region:{town}")
        # lure: the province of the person named in the question, when it differs
        lure = [world.region[world.home[person]]] if len(line) == 2 else []
        return Solution(facts, [F[f] for f in facts], world.region[town], lure)
    lure = [world.home[person]] if len(line) == 2 else []
    return Solution(facts, [F[f] for f in facts], town, lure)
