"""README's main command: train_local.py --demo (shortened epochs here; the full demo is timed in the notes)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_runs_the_whole_pipeline(tmp_path):
    env = {**os.environ, "SONOKIT_SUBMISSIONS": str(tmp_path / "subs")}
    fast = ["--set", "teacher.train.epochs=1", "--set", "student.train.epochs=1", "--set", "hrank.train.epochs=1",
            "--set", "teacher.train.max_batches=3", "--set", "student.train.max_batches=3", "--set", "hrank.train.max_batches=3"]
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_local.py"), "--demo", *fast], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "runs" / "demo"
    for stage in ("teacher:", "student:", "student control (no KD)", "hrank (reinit", "hrank control (finetune", "infer:", "flops:",
                  "package:", "report:", "where everything is:"):
        assert stage in r.stdout
    for f in ("submission.csv", "flops.json", "student/confusion.png", "hrank/fold0/ranks_heatmap.png", "config.yaml", "folds.csv",
              "report.md", "report.html", "report.json", "student_nokd/cv.json", "hrank_finetune/cv.json", "student/oof_tta.npz"):
        assert (run / f).is_file(), f
    # the ablation table, printed and in the report: one row per step, in the method's order, each compared with the one before
    steps = ["teacher", "student, no KD", "student, KD", "HRank control: fine-tune only", "HRank reinit", "student + TTA view orig",
             "student + TTA view fancypca", "student + soft vote of orig+fancypca"]
    table = r.stdout.split("report: ", 1)[1]
    assert [line.split("  ")[0] for line in table.splitlines()[4:4 + len(steps)]] == steps
    rep = json.loads((run / "report.json").read_text())
    rows = {x["label"]: x for x in rep["rows"]}
    assert rows["HRank reinit"]["compare"] == "hrank_finetune" and rows["student, KD"]["compare"] == "student_nokd"
    for x in rep["rows"][1:]:
        if x["compare"]:
            assert x["delta_acc"] == pytest.approx(x["acc"] - rows[next(y["label"] for y in rep["rows"] if y["key"] == x["compare"])]["acc"])
            small = x["spread"] is not None and abs(x["delta_acc"]) <= x["spread"]
            assert (x["verdict"] == "within fold spread") == small or x["verdict"].startswith("one fold")
    cv = json.loads((run / "student" / "cv.json").read_text())
    assert rows["student, KD"]["acc"] == pytest.approx(cv["overall"]["acc"]) and rows["student + TTA view orig"]["acc"] == rows["student, KD"]["acc"]
    assert rows["teacher"]["cost"]["true_gflops"] > rows["student, KD"]["cost"]["true_gflops"] > 0
    assert any("2 member(s) x 2 TTA view(s)" in line for line in rep["cost_lines"])
    # report.html is one self-contained page: the same table, every picture inlined
    from html.parser import HTMLParser

    class Page(HTMLParser):
        def __init__(self):
            super().__init__()
            self.rows, self.imgs, self.cell, self.in_table = [], [], None, False

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "table" and a.get("id") == "ablation":
                self.in_table = True
            if tag == "tr" and self.in_table:
                self.rows.append([])
            if tag in ("td", "th") and self.in_table:
                self.cell = ""
            if tag == "img":
                self.imgs.append(a["src"])

        def handle_endtag(self, tag):
            if tag in ("td", "th") and self.cell is not None:
                self.rows[-1].append(self.cell)
                self.cell = None
            if tag == "table":
                self.in_table = False

        def handle_data(self, data):
            if self.cell is not None:
                self.cell += data

    page = Page()
    page.feed((run / "report.html").read_text())
    assert [row[0] for row in page.rows[1:]] == steps and page.rows[0][:3] == ["step", "OOF loss", "OOF acc"]
    assert len(page.imgs) >= 6 and all(src.startswith("data:image/png;base64,") for src in page.imgs)
    assert "http" not in (run / "report.html").read_text().replace("http-equiv", "")
    sample = pd.read_csv(tmp_path / "demo_data" / "sample_submission.csv")
    sub = pd.read_csv(run / "submission.csv")
    assert sub["image_id"].tolist() == sample["image_id"].tolist()
    packaged = sorted((tmp_path / "subs").glob("*_demo.csv"))
    assert len(packaged) == 1 and packaged[0].read_bytes() == (run / "submission.csv").read_bytes()
    man = json.loads(packaged[0].with_suffix(".json").read_text())
    assert man["competition"] == "sonokit-demo" and set(man["cv"]) == {"teacher", "student", "hrank"}
    assert man["flops"]["competition_gflops"] > 0 and len(man["members"]) == 2
    # a second demo reuses the data and the cache, and resumes every finished stage
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_local.py"), "--demo", "--resume", *fast], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "making the demo data" not in r.stderr
    assert len(list((tmp_path / "subs").glob("*_demo*.csv"))) == 2  # packaged again, nothing overwritten
