"""results/SUMMARY.md and the report's front page: the headline numbers, computed by hand."""

from __future__ import annotations

import pandas as pd

from randlabels import provenance
from randlabels.analysis import headlines
from randlabels.io import write_table


def _misalignment() -> pd.DataFrame:
    rows = []
    for seed, (data, rand) in enumerate([(1.0, 2.0), (2.0, 4.0)]):
        for epoch, factor in ((0, 10.0), (4, 1.0)):  # epoch 0 must not count
            for basis, value in (("data", data), ("random", rand)):
                for layer, offset in (("conv1", 0.0), ("fc1", 100.0)):  # the first layer counts
                    rows.append({"experiment": "e", "labels": "random", "init_scale": 0.5, "seed": seed,
                                 "diverged": False, "collapsed": False, "epoch": epoch, "layer": layer,
                                 "basis": basis, "misalignment": value * factor + offset, "reason": ""})
    # A diverged seed: excluded.
    rows.append({**rows[-1], "seed": 9, "diverged": True, "epoch": 4, "misalignment": 1e6})
    return pd.DataFrame(rows)


def _transfer_summary() -> pd.DataFrame:
    rows = []
    for seed, (pre, gauss) in enumerate([(2.0, 0.5), (4.0, float("nan")), (3.0, 1.5)]):
        for variant, speedup in (("scratch", 1.0), ("pretrained", pre), ("gaussian", gauss)):
            rows.append({"experiment": "e", "task": "random10", "init_scale": 0.5, "variant": variant,
                         "seed": seed, "target": 0.5, "speedup": speedup})
    return pd.DataFrame(rows)


def _activations() -> pd.DataFrame:
    rows = []
    for seed, dead in enumerate([0.1, 0.3]):
        for epoch in (0, 4):
            rows.append({"module": "relu1", "frac_active": 0.5, "frac_dead": dead if epoch else 0.0,
                         "mean_activation": 0.1, "experiment": "e", "labels": "random", "init_scale": 0.5,
                         "seed": seed, "diverged": False, "epoch": epoch})
    return pd.DataFrame(rows)


def test_misalignment_is_the_mean_over_seeds_of_the_first_layer_at_the_last_epoch():
    (line,) = headlines.misalignment_lines(_misalignment())
    assert line == ("misalignment of conv1 at epoch 4, random labels, init scale 0.5: 1.5 against the data basis, "
                    "3 against a random basis (mean of 2 seeds)")


def test_collapsed_runs_are_kept_and_counted():
    table = _misalignment()
    table.loc[table["seed"] == 1, "collapsed"] = True
    (line,) = headlines.misalignment_lines(table)
    assert line.endswith("1.5 against the data basis, 3 against a random basis (mean of 2 seeds; 1 collapsed)")


def test_an_undefined_misalignment_is_counted_not_averaged():
    table = _misalignment()
    table.loc[(table["seed"] == 1) & (table["basis"] == "data"), "misalignment"] = float("nan")
    (line,) = headlines.misalignment_lines(table)
    assert "1 against the data basis" in line and "(mean of 1 seeds; undefined for 1 seeds)" in line


def test_the_pooled_score_of_the_last_epoch():
    table = pd.DataFrame([
        {"experiment": "e", "labels": "random", "init_scale": 0.5, "epoch": epoch, "layer": "conv1", "basis": basis,
         "misalignment": value * (10 if epoch == 0 else 1), "seeds": 3, "filters": 192, "left_out": "", "reason": ""}
        for epoch in (0, 40) for basis, value in (("data", 0.41), ("random", 1.24))
    ])
    (line,) = headlines.pooled_lines(table)
    assert line == ("misalignment of conv1 pooled over 3 seeds (one Σw) at epoch 40, random labels, init scale 0.5: "
                    "0.41 against the data basis, 1.24 against a random basis")
    # With the change from initialization (the table's ``of``), its scores follow.
    change = table[table["epoch"] == 40].assign(of="change", misalignment=[2.5, 18.2])
    (line,) = headlines.pooled_lines(pd.concat([table.assign(of="weights"), change], ignore_index=True))
    assert line == ("misalignment of conv1 pooled over 3 seeds (one Σw) at epoch 40, random labels, init scale 0.5: "
                    "0.41 against the data basis, 1.24 against a random basis; of the change from initialization: "
                    "2.5 against the data basis, 18.2 against a random basis")


def test_speedups_are_medians_over_the_seeds_that_reached_the_target():
    (line,) = headlines.speedup_lines(_transfer_summary())
    assert line == ("speed-up over scratch to accuracy 0.5, task random10, init scale 0.5: "
                    "pretrained ×3.00 (3/3 seeds), gaussian ×1.00 (2/3 seeds) (median over the seeds that reached it)")


def test_dead_units_are_the_mean_fraction_at_the_last_epoch():
    (line,) = headlines.dead_unit_lines(_activations())
    assert line == "dead ReLU units at epoch 4, random labels, init scale 0.5: relu1 20.0 % (mean of 2 seeds)"


def test_summary_and_front_page_from_the_tables_on_disk(tmp_path):
    tables = tmp_path / "results" / "e" / "tables"
    provenance.record_settings("aggregate_statistics", {}, {"exp": "e"})  # as the job that writes them
    try:
        write_table(_misalignment(), tables / "misalignment.tsv")
        write_table(_transfer_summary(), tables / "transfer_summary.tsv")
        write_table(_activations(), tables / "activations.tsv")
    finally:
        provenance.forget_job()
    text = headlines.write(["e", "not_run"], "Description of the workflow.", results=tmp_path / "results")
    assert (tmp_path / "results" / "SUMMARY.md").read_text() == text
    assert "## e\n\n- misalignment of conv1" in text and "\n- speed-up over scratch" in text
    assert "\n- dead ReLU units" in text
    assert "## not_run\n\n- no tables yet" in text
    stamp = provenance.stamp()
    assert f"Code, as the tables record it: randlabels {stamp['randlabels_version']}, " in text
    assert f" ({stamp['libraries']}; {stamp['machine']})." in text  # the environment that ran
    digest = provenance.read(tables / "misalignment.tsv")["lineage_sha256"][:12]
    assert digest == provenance.lineage_hash(provenance.settings_hash("aggregate_statistics", {}), {"exp": "e"}, [])[:12]
    assert ("- lineage hashes of the tables, over their settings, all upstream settings and the raw data "
            f"(provenance lineage_sha256, first 12 digits): misalignment.tsv {digest}, ") in text
    front = (tmp_path / "results" / "report_front.rst").read_text()
    assert front.startswith("Description of the workflow.\n\nSummary\n-------\n")
    assert "**e**\n\n- misalignment of conv1 at epoch 4" in front


def test_the_code_line_names_tables_written_before_stamps_had_an_environment(tmp_path):
    tables = tmp_path / "results" / "old" / "tables"
    tables.mkdir(parents=True)
    _misalignment().to_csv(tables / "misalignment.tsv", sep="\t", index=False)  # no stamp lines at all
    summary = headlines.summarize(["old"], results=tmp_path / "results")
    assert summary["code"] == ("Code, as the tables record it: randlabels ?, commit ? "
                               "(libraries not recorded; machine not recorded).")
