"""nesylib.report and notebook 07 on small hand-built results folders (no model is loaded)."""
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from nesylib import report
from nesylib.errors import ConfigError, DataError
from nesylib.pipeline.runs import write_json

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def main_row(method_id, method, accs, tflops, **extra):
    """A row in the format of students.result_row: accs {dataset: (accuracy, n)}, CI = accuracy -+ 0.1."""
    row = {"method": method, "method_id": method_id, **extra}
    for ds, (acc, n) in accs.items():
        row[ds], row[f"{ds}_ci"], row[f"{ds}_n"] = acc, [max(0.0, acc - 0.1), min(1.0, acc + 0.1)], n
    ids = [accs[d][0] for d in ("bbh", "gsm8k") if d in accs]
    oods = [accs[d][0] for d in ("agieval", "arc-e", "arc-c", "gsm8k_plus") if d in accs]
    row.update(id_avg=sum(ids) / len(ids) if ids else None, ood_avg=sum(oods) / len(oods) if oods else None,
               no_answer_rate=0.25, well_formed_rate=0.7, strict_id_avg=0.3, prefill_tmacs=tflops / 3,
               inference_tflops=tflops, items=sum(n for _, n in accs.values()), eval_seconds=12.0)
    return row


def nb(root, stem, results, params=None, env=None):
    write_json(root / stem / "results.json", results)
    write_json(root / stem / "params.json", {"preset": "unit", "student": "smollm2-135m", **(params or {})})
    write_json(root / stem / "env.json", env or {"device": "cpu", "git_commit": "abc123"})


SETS = {"bbh": (0.5, 10), "gsm8k": (0.2, 6), "agieval": (0.3, 9), "arc-e": (0.4, 7)}


def build(root: Path, stems=("00", "01", "03", "04", "05", "06", "08")) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if "00" in stems:
        nb(root, "00_data", {"bbh_train": 5209})
    if "01" in stems:
        nb(root, "01_teacher_distillation", {"teacher": "replay:unit-teacher", "items": 37, "accepted": 33},
           {"teacher_backend": "replay"})
    if "03" in stems:
        nb(root, "03_nesycd_training", {"student": "smollm2-135m", "tutor": "unit-tutor",
                                        "rows": [main_row("kb", "NesyCD", SETS, 3.0)]})
    if "04" in stems:
        nb(root, "04_skintern_curriculum", {"student": "smollm2-135m", "knowledge": {"writer": "unit-writer"},
                                            "rows": [main_row("skintern", "SKIntern", {**SETS, "bbh": (0.9, 10)},
                                                              1.0)]})
    if "05" in stems:
        nb(root, "05_baselines", {"student": "smollm2-135m", "rows": [
            main_row("std", "Std-CoT", SETS, 1.0),
            main_row("kard", "KA|RD", {**SETS, "bbh": (0.1, 10)}, 4.0),
            main_row("skintern", "SKIntern (again)", SETS, 9.0)]})
    if "06" in stems:
        sweep = lambda v, acc, split: {"sweep": "stages_T", "variant": f"T={v}", "value": v, "accuracy": acc,  # noqa
                                       "ci_low": acc - 0.1, "ci_high": acc + 0.1, "n": 12, "split": split}
        nb(root, "06_ablations", {"student": "smollm2-135m", "sweeps": {
            "stages_T": [sweep(1, 0.3, "test"), sweep(3, 0.4, "test"), sweep(1, 0.2, "ood")],
            "retriever": [{"sweep": "retriever", "variant": v, "value": v, "accuracy": a, "ci_low": a - 0.05,
                           "ci_high": a + 0.05, "n": 15} for v, a in (("bm25", 0.5), ("dense", 0.2))]}})
    if "08" in stems:
        rows = []
        for mid, label, acc, tmacs in (("std", "Std-CoT", 0.3, 0.01), ("nesycd", "NesyCD", 0.6, 0.025)):
            rows.append({"method": label, "method_id": mid, "no_answer_rate": 0.1, "prefill_tmacs": tmacs,
                         **{k: v for s in ("test", "ood") for k, v in
                            ((s, acc), (f"{s}_ci", [acc - 0.1, acc + 0.1]), (f"{s}_n", 24.0), (f"{s}_mc", acc),
                             (f"{s}_mc_ci", [acc - 0.1, acc + 0.1]))}})
        rows[1].update(test_diff_vs_std=0.3, test_diff_ci=[0.1, 0.5], ood_diff_vs_std=0.3, ood_diff_ci=[-0.05, 0.6])
        rows.append({"method": "Co-occurrence heuristic", "method_id": "cooccurrence", "test": None, "test_ci": None,
                     "test_mc": 0.4, "test_mc_ci": [0.2, 0.6], "ood": None, "ood_mc": 0.3})
        rows.append({"method": "Chance", "method_id": "chance", "test": 0.2, "test_ci": None, "ood": 0.2})
        nb(root, "08_synthetic_benchmark", {"student": "smollm2-135m", "eval_items": 48, "rows": rows,
                                            "benchmark": {"sizes": {"train": 90, "test": 24, "ood": 24},
                                                          "facts_in_train": 70, "mean_train_exposure": 1.5}},
           {"synth_config": "smoke"})
    return root


def test_main_table_values_dedup_and_averages(tmp_path):
    rep = report.build_report(build(tmp_path / "run"))
    t = rep.main
    assert list(t.method_id) == ["kb", "skintern", "std", "kard"]  # notebook order, 05's skintern dropped
    sk = t.set_index("method_id").loc["skintern"]
    assert sk.notebook == "04_skintern_curriculum" and sk.bbh == 0.9 and sk.inference_tflops == 1.0
    assert any("'skintern' is in 04_skintern_curriculum and 05_baselines" in n for n in rep.notes)
    std = t.set_index("method_id").loc["std"]
    assert (std.bbh, std.bbh_ci_low, std.bbh_ci_high, std.bbh_n) == (0.5, 0.4, 0.6, 10)
    assert std.id_avg == pytest.approx(0.35) and std.ood_avg == pytest.approx(0.35)
    assert std.id_datasets == "bbh,gsm8k" and std.ood_datasets == "agieval,arc-e"
    # two independent +-0.1 intervals averaged: half-width 0.1 / sqrt(2)
    assert std.id_ci_high - std.id_avg == pytest.approx(0.1 / math.sqrt(2), rel=1e-6)
    assert std["items"] == 32 and std.inference_flops_per_item == pytest.approx(1e12 / 32)
    assert std.student == "smollm2-135m" and std.student_params == 1.35e8
    pts = rep.points
    assert len(pts) == 8 and set(pts.split) == {"ID", "OOD"}
    assert pts[(pts.method_id == "kard") & (pts.split == "ID")].accuracy.item() == pytest.approx(0.15)


def test_average_is_the_plain_mean_when_not_stored(tmp_path):
    row = main_row("std", "Std-CoT", SETS, 1.0)
    row["id_avg"] = None
    nb(tmp_path, "05_baselines", {"rows": [row]})
    t = report.build_report(tmp_path).main
    assert t.id_avg.item() == pytest.approx(0.35)


def test_markdown_table(tmp_path):
    rep = report.build_report(build(tmp_path / "run"))
    md = report.main_table_markdown(rep.main, rep.notes, title="T")
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| Method"))
    assert "bbh (n=10)" in header and "arc-e (n=7)" in header and "ID avg" in header and "OOD avg" in header
    std = next(line for line in lines if line.startswith("| Std-CoT"))
    cells = [c.strip() for c in std.strip("|").split("|")]
    assert cells[:3] == ["Std-CoT", "05_baselines", "smollm2-135m"]
    assert cells[5] == "50.0 [40.0, 60.0]" and cells[-2] == "25.0" and cells[-1] == f"{1e3 / 32:.1f}"
    assert "| KA\\|RD |" in md  # a pipe in a method name does not break the row
    assert sum(line.startswith("| ") for line in lines) == 1 + 4
    assert any("'skintern' is in" in line for line in lines if line.startswith("- "))
    paths = report.write_tables(rep, tmp_path / "out")
    assert (tmp_path / "out" / "main_table.md").read_text().startswith("Main results (unit;")
    csv = pd.read_csv(tmp_path / "out" / "main_table.csv")
    assert list(csv.method_id) == ["kb", "skintern", "std", "kard"]
    assert {p.name for p in paths} >= {"synthetic_table.csv", "ablations.csv", "accuracy_vs_flops.csv"}


def test_missing_notebooks_are_listed_not_invented(tmp_path):
    root = build(tmp_path / "run", stems=("04",))
    (root / "05_baselines").mkdir()
    write_json(root / "05_baselines" / "params.json", {"preset": "unit"})  # started, never finished
    write_json(root / "07_flops_and_figures" / "results.json", {"rows": "not read"})  # the figures notebook itself
    rep = report.build_report(root)
    assert list(rep.collected.notebooks) == ["04_skintern_curriculum"]
    assert rep.collected.missing == ["01_teacher_distillation", "02_kb_construction",
                                     "03_nesycd_training", "05_baselines", "06_ablations", "08_synthetic_benchmark"]
    assert "03_nesycd_training (the NesyCD row)" in rep.notes[0] and "08_synthetic_benchmark" in rep.notes[0]
    assert any("05_baselines started but has no results.json" in n for n in rep.notes)
    assert list(rep.main.method_id) == ["skintern"] and rep.synthetic is None and rep.ablations is None
    drawn = report.draw_all(rep, tmp_path / "fig")
    assert sorted(drawn) == ["accuracy_vs_flops", "main_accuracy"]
    cap = (tmp_path / "fig" / "main_accuracy.md").read_text()
    assert "teacher not recorded (01_teacher_distillation missing)" in cap and "05_baselines" in cap
    only_08 = build(tmp_path / "synth_only", stems=("08",))
    rep = report.build_report(only_08)
    assert rep.main.empty and sorted(report.draw_all(rep, tmp_path / "fig8")) == ["synthetic_accuracy"]
    assert any("no main-table rows" in n for n in rep.notes)


def _corrupt(root, stem, content):
    (root / stem / "results.json").write_text(content if isinstance(content, str) else json.dumps(content))
    return root / stem / "results.json"


@pytest.mark.parametrize("stem,content,match", [
    ("05_baselines", "{not json", "not valid JSON"),
    ("05_baselines", [1, 2], "expected a JSON object"),
    ("05_baselines", {"rows": {"std": 1}}, "'rows' must be a list"),
    ("03_nesycd_training", {"rows": [{"method": "x"}]}, r"rows\[0\] lacks a 'method_id'"),
    ("04_skintern_curriculum", {"rows": [{**main_row("skintern", "S", SETS, 1.0), "gsm8k_ci": [0.3]}]},
     r"rows\[0\] \(skintern\) 'gsm8k_ci' must be \[low, high\]"),
    ("04_skintern_curriculum", {"rows": [{**main_row("skintern", "S", SETS, 1.0), "bbh": "high"}]},
     "'bbh' must be a number"),
    ("04_skintern_curriculum", {"rows": [{"method_id": "skintern"}]}, "no per-dataset accuracy"),
    ("06_ablations", {"sweep": []}, "'sweeps' must be an object"),
    ("06_ablations", {"sweeps": {"k": [{"sweep": "k", "variant": "a", "value": 1, "accuracy": 0.5}]}},
     r"sweeps\['k'\]\[0\] lacks \['ci_low', 'ci_high', 'n'\]"),
    ("08_synthetic_benchmark", {"rows": [{"method_id": "std", "test": 0.4, "test_ci": [0.5, 0.3]}]}, "low above high"),
])
def test_malformed_results_name_the_file(tmp_path, stem, content, match):
    root = build(tmp_path / "run")
    path = _corrupt(root, stem, content)
    with pytest.raises(DataError, match=match) as err:
        report.build_report(root)
    assert str(path) in str(err.value)


def test_bad_folders_are_named(tmp_path):
    with pytest.raises(ConfigError, match="is not a folder"):
        report.collect(tmp_path / "nowhere")
    (tmp_path / "empty" / "not_a_notebook").mkdir(parents=True)
    with pytest.raises(ConfigError, match="has no <notebook>/results.json"):
        report.collect(tmp_path / "empty")
    root = build(tmp_path / "run")
    (root / "03_nesycd_training" / "params.json").write_text("[")
    with pytest.raises(DataError, match=r"03_nesycd_training/params.json: not valid JSON"):
        report.collect(root)


def test_every_figure_is_a_png_with_a_caption_from_the_results(tmp_path):
    rep = report.build_report(build(tmp_path / "run"))
    drawn = report.draw_all(rep, tmp_path / "fig")
    assert sorted(drawn) == sorted(report.FIGURES)
    for name, (fig, (png, md)) in drawn.items():
        assert png == tmp_path / "fig" / f"{name}.png" and png.read_bytes()[:8] == PNG_MAGIC
        text = md.read_text()
        assert text.startswith(f"![{name}]({name}.png)") and "`smollm2-135m` (135M parameters)" in text
        assert "preset unit" in text and "smaller than every student of the papers" in text
    flops = (tmp_path / "fig" / "accuracy_vs_flops.md").read_text()
    assert "bbh: 10 items; gsm8k: 6 items; agieval: 9 items; arc-e: 7 items (32 in all)" in flops
    assert "teacher `replay:unit-teacher`" in flops and "33 of 37 training questions" in flops
    assert "NesyCD tutor `unit-tutor`" in flops and "knowledge writer `unit-writer`" in flops
    # ID averages 0.35 (NesyCD, Std-CoT), 0.55 (SKIntern), 0.15 (KARD), each +-0.071: only the equal pair overlaps
    assert "ID average: 5 of 6 method pairs have disjoint intervals (NesyCD < SKIntern;" in flops
    assert "OOD average: the intervals of all 4 methods overlap" in flops
    assert "±10.0 points" in flops and "Only one student was run" in flops
    synth = (tmp_path / "fig" / "synthetic_accuracy.md").read_text()
    assert "test: 24 items evaluated" in synth and "split sizes train 90, test 24, ood 24" in synth
    assert "chance on test: 20.0%" in synth and "synth_config 'smoke'" in synth
    assert "exclude zero at 95%: NesyCD +30.0 points [+10.0, +50.0] on test; the other 1 include it." in synth
    assert "relative to Std-CoT's question-only prompt on the same items: NesyCD 2.50x." in synth
    abl = (tmp_path / "fig" / "ablations.md").read_text()
    assert "stages_T: T=1, T=3 (12 items each)" in abl and "retriever: bm25, dense (15 items each)" in abl
    assert "retriever: 1 of 1 variant pairs have disjoint intervals (bm25 > dense)." in abl
    assert "stages_T (test): the intervals of both variants overlap" in abl
    # a different run gives a different caption: nothing in it is fixed text
    other = build(tmp_path / "other", stems=("05",))
    rows = json.loads((other / "05_baselines" / "results.json").read_text())
    for r in rows["rows"]:
        r["bbh_n"] = 250
    write_json(other / "05_baselines" / "results.json", rows)
    assert "bbh: 250 items" in report.caption("main_accuracy", report.build_report(other))


def test_figure_functions(tmp_path):
    rep = report.build_report(build(tmp_path / "run"))
    fig = report.fig_accuracy_vs_flops(rep.points)
    assert len(fig.axes) == 2 and all(ax.get_xscale() == "log" for ax in fig.axes)
    labels = [t.get_text() for t in fig.axes[1].texts]  # OOD: Std-CoT and SKIntern share accuracy and FLOPs
    assert sorted(labels) == ["KA|RD", "NesyCD", "SKIntern\nStd-CoT"]
    # a second student (another run's table) is a second series
    two = pd.concat([rep.points, rep.points.assign(student="qwen2-1.5b", student_params=1.5e9,
                                                   inference_flops_per_item=rep.points.inference_flops_per_item * 10)])
    legend = [t.get_text() for t in report.fig_accuracy_vs_flops(two).axes[0].get_legend().get_texts()]
    assert legend == ["smollm2-135m (135M)", "qwen2-1.5b (1.5B)"]
    assert len(report.fig_main_bars(rep.main).axes[0].patches) == 2 * 4
    assert [ax.get_title() for ax in report.fig_synthetic(rep.synthetic).axes] == ["test (n=24)", "ood (n=24)"]
    abl = report.fig_ablations(rep.ablations)
    assert [ax.get_title() for ax in abl.axes if ax.get_visible()] == ["stages_T", "retriever"]
    with pytest.raises(ValueError, match="choose 'inference' or 'prefill'"):
        report.fig_accuracy_vs_flops(rep.points, flops="wall")
    with pytest.raises(ValueError, match="caption name"):
        report.caption("nope", rep)


def test_model_size_from_names():
    assert report.model_size("smollm2-135m") == 1.35e8
    assert report.model_size("tinyllama") == 1.1e9  # alias -> TinyLlama/TinyLlama-1.1B-...
    assert report.model_size("qwen2-0.5b") == 5e8 and report.model_size("Meta-Llama-3-8B") == 8e9
    assert report.model_size("tiny-llama") is None and report.model_size(None) is None
    assert report.format_size(1.35e8) == "135M" and report.format_size(7e9) == "7B"


def test_notebook_redraws_a_results_folder(tmp_path):
    import papermill as pm

    src = build(tmp_path / "committed", stems=("01", "03", "04", "05", "08"))
    pm.execute_notebook(str(ROOT / "notebooks/07_flops_and_figures.ipynb"), str(tmp_path / "07.ipynb"),
                        parameters=dict(preset="unit", run_root=str(tmp_path / "run"), results_dir=str(src)),
                        kernel_name="python3", progress_bar=False, cwd=str(ROOT / "notebooks"))
    out = tmp_path / "run" / "07_flops_and_figures"
    for name in ("main_accuracy", "accuracy_vs_flops", "synthetic_accuracy"):
        assert (out / f"{name}.png").read_bytes()[:8] == PNG_MAGIC and (out / f"{name}.md").is_file()
    assert not (out / "ablations.png").exists()
    res = json.loads((out / "results.json").read_text())
    assert res["missing"] == ["02_kb_construction", "06_ablations"]
    assert [r["method_id"] for r in res["main_table"]] == ["kb", "skintern", "std", "kard"]
    assert res["source_presets"] == ["unit"] and res["figures"]["main_accuracy"] == ["main_accuracy.png",
                                                                                    "main_accuracy.md"]
    assert "| NesyCD | 03_nesycd_training |" in (out / "main_table.md").read_text()
    assert json.loads((out / "params.json").read_text())["results_dir"] == str(src)
    assert not list(src.rglob("main_table*"))  # the source folder is only read
