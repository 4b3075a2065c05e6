"""Schedule arithmetic (method.md §4.3, D15, D17)."""
from fractions import Fraction

import pytest

from nesylib.methods.curriculum import KINDS, Schedule, steps_per_stage
from nesylib.errors import ConfigError


def test_linear_t6_matches_the_authors_demo_rule_and_d15_ratios():
    s = Schedule()
    assert (s.T, s.kind, s.max_demos) == (6, "linear", 6)
    assert list(s.stages) == [0, 1, 2, 3, 4, 5, 6]
    assert [s.n_demos(t) for t in s.stages] == [6 - t for t in range(7)]
    for t in s.stages:
        assert s.keep_ratio(t) == pytest.approx(float(1 - Fraction(t, 6)), abs=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("T", [1, 2, 3, 6, 9])
@pytest.mark.parametrize("max_demos", [0, 1, 3, 6, 8])
def test_every_kind_starts_full_ends_empty_and_never_increases(kind, T, max_demos):
    s = Schedule(T=T, kind=kind, max_demos=max_demos)
    ratios = [s.keep_ratio(t) for t in s.stages]
    demos = [s.n_demos(t) for t in s.stages]
    assert ratios[0] == 1.0 and ratios[-1] == 0.0
    assert demos[0] == max_demos and demos[-1] == 0
    assert all(a >= b for a, b in zip(ratios, ratios[1:]))
    assert all(a >= b for a, b in zip(demos, demos[1:]))
    assert all(0 <= d <= max_demos for d in demos)


def test_exponential_and_step_values():
    e = Schedule(T=6, kind="exponential")
    assert [e.keep_ratio(t) for t in e.stages] == pytest.approx([63 / 63, 31 / 63, 15 / 63, 7 / 63, 3 / 63, 1 / 63, 0])
    assert [e.n_demos(t) for t in e.stages] == [6, 3, 1, 1, 0, 0, 0]  # 2.95 -> 3, 1.43 -> 1, 0.67 -> 1
    assert all(a > b for a, b in zip([e.keep_ratio(t) for t in e.stages], [e.keep_ratio(t) for t in range(1, 7)]))
    st = Schedule(T=6, kind="step")
    assert [st.keep_ratio(t) for t in st.stages] == [1, 1, 1, 0, 0, 0, 0]
    assert [st.n_demos(t) for t in st.stages] == [6, 6, 6, 0, 0, 0, 0]
    assert [Schedule(T=5, kind="step").keep_ratio(t) for t in range(6)] == [1, 1, 1, 0, 0, 0]


def test_demo_count_rounds_half_up_not_to_even():
    s = Schedule(T=4, max_demos=5)  # 5 * (1 - t/4) = 5, 3.75, 2.5, 1.25, 0
    assert [s.n_demos(t) for t in s.stages] == [5, 4, 3, 1, 0]


def test_table_rows():
    rows = Schedule().table()
    assert [r["stage"] for r in rows] == list(range(7))
    assert rows[3] == {"stage": 3, "keep_ratio": 0.5, "n_demos": 3}


@pytest.mark.parametrize("kwargs,param", [({"T": 0}, "T"), ({"T": 2.5}, "T"), ({"T": True}, "T"),
                                          ({"kind": "cosine"}, "kind"), ({"max_demos": -1}, "max_demos")])
def test_bad_parameters_name_the_parameter(kwargs, param):
    with pytest.raises(ConfigError, match=param):
        Schedule(**kwargs)


@pytest.mark.parametrize("t", [-1, 7, 1.0, "2"])
def test_bad_stage_is_rejected(t):
    with pytest.raises(ConfigError, match="stage t"):
        Schedule().keep_ratio(t)


def test_steps_per_stage_even_split_with_remainder_last():
    assert steps_per_stage(70, 6) == [10] * 7
    assert steps_per_stage(75, 6) == [10] * 6 + [15]
    assert steps_per_stage(7, 6) == [1] * 7
    for total in range(7, 200):
        split = steps_per_stage(total, 6)
        assert sum(split) == total and len(split) == 7
        assert split[:-1] == [total // 7] * 6 and split[-1] >= split[0]
    with pytest.raises(ConfigError, match="total_steps"):
        steps_per_stage(6, 6)
    with pytest.raises(ConfigError, match="T"):
        steps_per_stage(100, 0)

