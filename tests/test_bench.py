"""The learning benchmark's pipeline on one tiny run: real train.py, timed, read back."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import pytest
from conftest import ROOT, assert_one_line_error, run_program
from test_train_cli import QUICK


def test_learning_bench_tabulates_real_runs_and_keeps_each_as_it_ends(tmp_path):
    bench = subprocess.Popen([sys.executable, "-m", "bench.learning", "--seeds", "3", "4", "--out", str(tmp_path), "--",
                              *QUICK], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    summary = tmp_path / "learning.json"
    deadline = time.monotonic() + 300
    while not summary.exists() and bench.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    # written when the first run ended, while the second still runs: a stopped bench keeps the first
    assert [row["seed"] for row in json.loads(summary.read_text())["rows"]] == [3]
    stdout, stderr = bench.communicate(timeout=300)
    assert bench.returncode == 0, stderr
    row, _ = json.loads(summary.read_text())["rows"]
    assert row["agent"] == "dqn" and row["seed"] == 3 and row["steps"] == 600
    assert row["peak_mb"] > 100 and row["process_seconds"] > row["seconds"] > 0
    assert len(row["evaluations"]) == 2 and row["solved"] is False  # 600 steps do not solve CartPole
    assert "| dqn | 3 |" in stdout and "| dqn | 4 |" in stdout
    assert (tmp_path / "learning.png").read_bytes()[:4] == b"\x89PNG"


def test_curve_of_a_run_without_its_record_is_read_from_its_checkpoint(tmp_path):
    stem = tmp_path / "run"
    assert run_program("train.py", *QUICK, "--no-early-stop", "--out", str(stem)).returncode == 0
    stem.with_name("run.json").unlink()  # as a run that is still going, or was killed, has none
    curve = subprocess.run([sys.executable, "-m", "bench.curve", str(stem), "--out", str(tmp_path / "curve")],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert curve.returncode == 0, curve.stderr
    assert "CartPole-v1: 600 steps" in curve.stdout
    assert "| 300 |" in curve.stdout and "| 600 |" in curve.stdout
    assert (tmp_path / "curve.csv").read_text() == (tmp_path / "run.csv").read_text()
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"


def test_curve_of_a_stem_without_a_checkpoint_is_one_line_and_a_non_zero_exit(tmp_path):
    curve = subprocess.run([sys.executable, "-m", "bench.curve", str(tmp_path / "none"), "--out", str(tmp_path / "c")],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert curve.returncode != 0 and curve.stdout == ""
    assert curve.stderr.strip().splitlines() == [f"bench.curve: error: no checkpoint at {tmp_path / 'none'}"
                                                 ".checkpoint.h5: give the --out STEM of a run that reached its first "
                                                 "evaluation (a run writes its checkpoint there)"]
    assert not list(tmp_path.iterdir())


def test_a_stopped_learning_bench_goes_on_where_it_was_with_resume(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    # seed 3 was killed after its first checkpoint (a checkpoint, no record); seed 4 never started
    killed = run_program("train.py", *QUICK, "--no-early-stop", "--total-steps", "300", "--n-step", "2", "--seed", "3",
                         "--out", str(runs / "dqn-n.2-CartPole-v1-3"))
    assert killed.returncode == 0, killed.stderr
    (runs / "dqn-n.2-CartPole-v1-3.json").unlink()
    command = [sys.executable, "-m", "bench.learning", "--seeds", "3", "4", "--out", str(tmp_path), "--resume",
               "--variant", "n.2", "--", *QUICK, "--no-early-stop", "--n-step", "2"]
    bench = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert bench.returncode == 0, bench.stderr
    # a variant's dot is its own, not a file suffix: the summary is learning-n.2.json (and .png), not learning-n.json
    assert sorted(path.name for path in tmp_path.glob("learning-*")) == ["learning-n.2.json", "learning-n.2.png"]
    rows = json.loads((tmp_path / "learning-n.2.json").read_text())["rows"]
    assert [(row["seed"], row["steps"]) for row in rows] == [(3, 600), (4, 600)]
    # seed 3 went on from its checkpoint at step 300: its first evaluation is the killed run's own
    assert [e["step"] for e in rows[0]["evaluations"]] == [300, 600]
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stderr.count("finished before, record kept") == 2, again.stderr
    assert json.loads((tmp_path / "learning-n.2.json").read_text())["rows"] == rows
    # a resumed bench of fewer seeds keeps the summary's rows of the others (as SB3's rows join ours later)
    one = subprocess.run([*command[:3], "--seeds", "4", *command[6:]], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert one.returncode == 0 and one.stderr.count("finished before, record kept") == 1, one.stderr
    summary = json.loads((tmp_path / "learning-n.2.json").read_text())
    assert summary["rows"] == rows and summary["command"].count("python -m bench.learning") == 2


def test_a_learning_bench_with_no_run_to_do_is_one_line_and_exit_2(tmp_path):
    bench = subprocess.run([sys.executable, "-m", "bench.learning", "--seeds", "3", "--dqn-seeds", "--out",
                            str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bench.returncode == 2 and bench.stderr.strip().splitlines()[-1] == (
        "learning.py: error: no run left to do: --dqn-seeds and --sb3-seeds leave none of --seeds")
    assert not list(tmp_path.iterdir())


# a MinAtar run of a few seconds: 300 steps, evaluated at 150 and 300
TINY_MINATAR = ["--learning-starts", "50", "--eval-interval", "150", "--eval-episodes", "1", "--final-eval-episodes",
                "2", "--confirm-episodes", "2", "--buffer-size", "500", "--batch-size", "8"]


def test_of_two_workers_handed_the_same_last_cell_at_once_exactly_one_runs_it(tmp_path):
    from bench.grid import cell_taken, open_grid, work

    cells = ["Pong|drq|0"]
    study = open_grid(f"sqlite:///{tmp_path / 'grid.db'}", "test", cells)
    first, second = study.ask(), study.ask()  # both asked before either ran: the grid hands both its one cell
    assert first.suggest_categorical("cell", cells) == second.suggest_categorical("cell", cells) == cells[0]
    assert [cell_taken(study, first, cells[0]), cell_taken(study, second, cells[0])] == [False, True]
    # the newer trial checked first, before the older had its cell, and claimed it: the older yields
    again = open_grid(f"sqlite:///{tmp_path / 'again.db'}", "test", cells)
    older, newer = again.ask(), again.ask()
    newer.suggest_categorical("cell", cells)
    assert not cell_taken(again, newer, cells[0])
    newer.set_user_attr("claimed", newer.number)
    older.suggest_categorical("cell", cells)
    assert cell_taken(again, older, cells[0])
    ran: list[str] = []
    other = open_grid(f"sqlite:///{tmp_path / 'other.db'}", "test", cells)
    assert work(other, cells, lambda cell: ran.append(cell) or {"final": 0.0}, jobs=2) == [] and ran == cells


def test_a_stopped_or_failed_cell_goes_back_in_the_grid_and_the_next_command_runs_it(tmp_path):
    from bench.grid import open_grid, work

    cells = ["a|x|0", "b|x|0", "c|x|0"]
    storage = f"sqlite:///{tmp_path / 'grid.db'}"
    ran: list[str] = []

    def stopped_at_the_second(cell: str) -> dict:
        ran.append(cell)
        if len(ran) == 2:
            raise KeyboardInterrupt  # Ctrl-C, or a run that Ctrl-C or SIGTERM stopped
        return {"final": 1.0}

    with pytest.raises(KeyboardInterrupt):
        work(open_grid(storage, "test", cells), cells, stopped_at_the_second, jobs=1)
    first, stopped = ran
    again: list[str] = []
    assert work(open_grid(storage, "test", cells), cells, lambda cell: again.append(cell) or {"final": 2.0}, 1) == []
    assert again[0] == stopped and sorted(again) == sorted(set(cells) - {first})  # the stopped cell first, once

    ran.clear()
    failing = f"sqlite:///{tmp_path / 'failing.db'}"

    def failing_at_the_second(cell: str) -> dict:
        ran.append(cell)
        if len(ran) == 2:
            raise RuntimeError(f"{cell}: train.py failed: No space left on device")
        return {"final": 1.0}

    assert work(open_grid(failing, "test", cells), cells, failing_at_the_second, jobs=1) == [
        f"{ran[1]}: train.py failed: No space left on device"]
    again.clear()  # the disk freed, the same command again: the failed cell is tried again, and nothing else
    assert work(open_grid(failing, "test", cells), cells, lambda cell: again.append(cell) or {"final": 2.0}, 1) == []
    assert again == [ran[1]]


def test_a_finished_run_of_another_budget_is_neither_a_result_of_the_grid_nor_overwritten(tmp_path):
    from bench.grid import train_cell

    stem = tmp_path / "dqn-minatar-breakout-v1-0"
    record = {"run": {"total_steps": 50_000}, "final_evaluation": {"mean": 3.0}}
    stem.with_name(stem.name + ".json").write_text(json.dumps(record))
    stem.with_name(stem.name + ".timed.json").write_text(json.dumps({"process_seconds": 1.0, "peak_mb": 500}))
    assert train_cell(stem, [], 50_000, train=False) == (record, {"process_seconds": 1.0, "peak_mb": 500})
    with pytest.raises(FileNotFoundError, match="50000 steps, not 200000"):
        train_cell(stem, [], 200_000, train=False)  # a report of the 200k grid leaves it out
    with pytest.raises(RuntimeError, match="pass --total-steps 50000"):
        train_cell(stem, ["--env", "MinAtar/Breakout-v1"], 200_000)  # the 200k grid's worker runs nothing over it
    assert json.loads(stem.with_name(stem.name + ".json").read_text()) == record


def test_a_resumed_cells_time_is_the_whole_runs_its_checkpoints_seconds_and_the_commands(tmp_path):
    from bench.grid import timed_cell

    stem = tmp_path / "dqn-minatar-breakout-v1-0"
    record = {"run": {"total_steps": 50_000}, "final_evaluation": {"mean": 3.0}}
    stem.with_name(stem.name + ".json").write_text(json.dumps(record))  # as the resumed run writes it at its end
    start = time.perf_counter()
    _, timing = timed_cell(stem, ["-c", "pass"], 50_000, finished=False, earlier_seconds=1_000.0)
    assert 1_000.0 <= timing["process_seconds"] <= 1_000.0 + time.perf_counter() - start + 0.1
    assert json.loads(stem.with_name(stem.name + ".timed.json").read_text()) == timing


def test_a_qr_dqn_cell_of_another_budget_is_neither_a_result_of_the_ablation_nor_overwritten(tmp_path):
    from bench.ablation import QR_DQN, run_cell

    stem = tmp_path / "runs" / "qr-dqn-sb3-minatar-breakout-v1-0"
    stem.parent.mkdir()
    record = {"run": {"total_steps": 50_000}, "final_evaluation": {"mean": 3.0}, "steps": 50_000, "seconds": 60.0,
              "eval_seconds": 10.0}
    stem.with_name(stem.name + ".json").write_text(json.dumps(record))
    stem.with_name(stem.name + ".timed.json").write_text(json.dumps({"process_seconds": 61.0, "peak_mb": 500}))
    cell = f"MinAtar/Breakout-v1|{QR_DQN}|0"
    assert run_cell(cell, argparse.Namespace(out=tmp_path, total_steps=50_000), train=False)["final"] == 3.0
    with pytest.raises(FileNotFoundError, match="50000 steps, not 200000"):
        run_cell(cell, argparse.Namespace(out=tmp_path, total_steps=200_000), train=False)
    with pytest.raises(RuntimeError, match="pass --total-steps 50000"):
        run_cell(cell, argparse.Namespace(out=tmp_path, total_steps=200_000))
    assert json.loads(stem.with_name(stem.name + ".json").read_text()) == record


def test_an_sb3_checkpoints_state_is_read_alone_and_a_file_that_is_not_one_is_one_line(tmp_path):
    import zipfile

    from bench.sb3_dqn import checkpoint_path, checkpoint_state, write_checkpoint
    from common import UserError

    path = checkpoint_path(tmp_path / "qr-dqn-1.json")
    assert path.name == "qr-dqn-1.json.checkpoint.zip" and checkpoint_state(path) is None
    state = {"run": {"seed": 1}, "steps": 25_000, "seconds": 900.5, "progress": {"evaluations": []}}
    write_checkpoint(path, state, {"model.zip": b"model", "replay_buffer.pkl": bytes(range(256))})
    assert checkpoint_state(path) == state
    with zipfile.ZipFile(path) as archive:
        assert archive.read("replay_buffer.pkl") == bytes(range(256)) and archive.read("model.zip") == b"model"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left beside it
    path.write_text("not a zip")
    with pytest.raises(UserError, match="not a checkpoint of bench"):
        checkpoint_state(path)


def test_resuming_an_sb3_run_from_another_runs_checkpoint_is_one_line_and_exit_2(tmp_path):
    from bench.sb3_dqn import checkpoint_path, write_checkpoint

    out = tmp_path / "sb3.json"
    write_checkpoint(checkpoint_path(out), {"run": {"env_id": "CartPole-v1", "seed": 4, "algo": "dqn", "n_steps": 1,
                                                    "total_steps": 50_000}}, {})
    resumed = subprocess.run([sys.executable, "-m", "bench.sb3_dqn", "--env", "CartPole-v1", "--seed", "3", "--out",
                              str(out), "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert_one_line_error(resumed, "checkpoint of another run", "'seed': 4")
    assert resumed.returncode == 2 and checkpoint_path(out).is_file() and not out.exists()


def test_a_qr_dqn_cell_killed_after_its_checkpoint_is_timed_with_the_checkpoints_seconds(tmp_path, monkeypatch):
    import bench.ablation
    from bench.sb3_dqn import checkpoint_path, write_checkpoint

    stem = tmp_path / "runs" / "qr-dqn-sb3-minatar-breakout-v1-2"
    stem.parent.mkdir()
    write_checkpoint(checkpoint_path(stem.with_name(stem.name + ".json")), {"seconds": 1_234.5}, {})
    calls = []

    def timed_cell(cell_stem, command, total_steps, **options):  # what the grid would run, not run: SB3 is not here
        calls.append((cell_stem, command, options))
        return {"final_evaluation": {"mean": 8.0}, "steps": 200, "seconds": 20.0, "eval_seconds": 10.0}, {}
    monkeypatch.setattr(bench.ablation, "timed_cell", timed_cell)
    cell = f"MinAtar/Breakout-v1|{bench.ablation.QR_DQN}|2"
    bench.ablation.run_cell(cell, argparse.Namespace(out=tmp_path, total_steps=200))
    (called_stem, command, options), = calls
    assert called_stem == stem and command[command.index("--out") + 1] == f"{stem}.json"
    assert options["earlier_seconds"] == 1_234.5


def test_an_sb3_run_killed_after_its_checkpoint_goes_on_to_a_whole_record(tmp_path):
    """Where Stable-Baselines3 is installed (bench/requirements-sb3.txt; the test requirements leave it out)."""
    import os
    import signal

    pytest.importorskip("stable_baselines3")
    out = tmp_path / "sb3.json"
    command = [sys.executable, "-m", "bench.sb3_dqn", "--env", "CartPole-v1", "--seed", "3", "--total-steps",
               "10000", "--out", str(out)]
    run = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    checkpoint = tmp_path / "sb3.json.checkpoint.zip"
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=60) != 0 and not out.exists()  # stopped after the evaluation at 2,500 steps
    again = subprocess.run([*command, "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    record = json.loads(out.read_text())
    assert [evaluation["step"] for evaluation in record["evaluations"]] == [2_500, 5_000, 7_500, 10_000]
    assert record["steps"] >= 10_000 and record["final_evaluation"]["episodes"] == 100
    assert not checkpoint.exists()


def test_the_ablation_grid_is_handed_out_by_an_optuna_study_and_goes_on_where_it_was(tmp_path):
    import optuna

    # the Rainbow cell's worker died after its first checkpoint: a checkpoint at the cell's stem, no record
    stem = tmp_path / "runs" / "rainbow-minatar-breakout-v1-0"
    killed = run_program("train.py", "--env", "MinAtar/Breakout-v1", "--agent", "rainbow", "--seed", "0", "--out",
                         str(stem), "--total-steps", "150", "--checkpoint-buffer", "--no-progress", *TINY_MINATAR)
    assert killed.returncode == 0, killed.stderr
    stem.with_name(stem.name + ".json").unlink()
    command = [sys.executable, "-m", "bench.ablation", "--games", "MinAtar/Breakout-v1", "--seeds", "0",
               "--ablation-games", "--qrdqn-games", "--total-steps", "300", "--out", str(tmp_path), "--", *TINY_MINATAR]
    bench = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert bench.returncode == 0, bench.stderr
    results = json.loads((tmp_path / "ablation.json").read_text())
    assert sorted((cell["variant"], cell["seed"]) for cell in results["cells"]) == [("DQN", 0), ("Rainbow", 0)]
    assert [row["variant"] for row in results["games"]] == ["DQN", "Rainbow"]
    assert all(row["low"] <= row["mean"] <= row["high"] for row in results["games"])
    assert "| MinAtar/Breakout-v1 | Rainbow | 1 |" in bench.stdout
    # Rainbow's speed as a fraction of DQN's, from the two cells' own rates; each row's peak memory, from its timing
    dqn_row, rainbow_row = results["games"]
    assert results["rainbow_speed"] == [{"game": "MinAtar/Breakout-v1",
                                         "of_dqn": rainbow_row["steps_per_second"] / dqn_row["steps_per_second"]}]
    assert f"Rainbow's median env steps/s is {results['rainbow_speed'][0]['of_dqn']:.0%} of DQN's" in bench.stdout
    assert [row["peak_mb"] for row in results["games"]] == [cell["peak_mb"] for cell in results["cells"]]
    assert (tmp_path / "ablation.png").read_bytes()[:4] == b"\x89PNG"
    # the Rainbow run went on from its checkpoint at step 150, with --agent rainbow's own settings
    record = json.loads(stem.with_name(stem.name + ".json").read_text())
    assert [e["step"] for e in record["evaluations"]] == [150, 300] and record["config"]["distributional"]
    (name,) = optuna.get_all_study_names(f"sqlite:///{tmp_path / 'ablation.db'}")
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'ablation.db'}")
    assert sorted(t.params["cell"] for t in study.trials if t.state.name == "COMPLETE") == [
        "MinAtar/Breakout-v1|DQN|0", "MinAtar/Breakout-v1|Rainbow|0"]
    # run again: every cell is done, no trial is even started, the report is the same
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    after = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'ablation.db'}").trials
    assert len(after) == len(study.trials)
    assert json.loads((tmp_path / "ablation.json").read_text())["cells"] == results["cells"]
    # the report of another grid over these runs (one more seed), none of whose cells ran: the finished runs count
    wider = subprocess.run([*command[:3], "--report-only", *command[3:7], "1", *command[7:]], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert wider.returncode == 0, wider.stderr
    assert json.loads((tmp_path / "ablation.json").read_text())["cells"] == results["cells"]
    assert len(optuna.get_all_study_names(f"sqlite:///{tmp_path / 'ablation.db'}")) == 2
    # a report trains nothing: it needs no QR-DQN package (CI has none) even where the grid has QR-DQN cells
    default_qrdqn = subprocess.run([*command[:7], "--report-only", "--total-steps", "300", "--out", str(tmp_path)],
                                   cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert default_qrdqn.returncode == 0, default_qrdqn.stderr
    assert json.loads((tmp_path / "ablation.json").read_text())["cells"] == results["cells"]


def test_a_timed_run_reports_its_exit_status_output_and_peak_memory():
    # timed from a small process, as a bench times its runs: this test's own (TensorFlow's) memory would count
    timer = ("import json, sys; from bench.timed import run_timed; "
             "print(json.dumps([vars(run_timed('-c', code)) for code in sys.argv[1:]]))")
    allocates = "import sys; block = bytearray(300 * 2**20); print(len(block)); sys.exit(3)"
    result = subprocess.run([sys.executable, "-c", timer, allocates, "pass"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    big, small = json.loads(result.stdout)
    assert big["returncode"] == 3 and big["stdout"].strip() == str(300 * 2**20) and big["wall_seconds"] > 0
    assert small["returncode"] == 0 and small["stdout"] == ""
    assert 300 < big["peak_mb"] < 400 and small["peak_mb"] < 150 and big["peak_mb"] - small["peak_mb"] > 250


# a run that says when it started and, on Ctrl-C, that it stopped; left alone it would run for a minute
STOPPABLE = """import os, pathlib, signal, sys, time
def stop(*_):
    pathlib.Path(sys.argv[2]).write_text("stopped")
    sys.exit(130)
signal.signal(signal.SIGINT, stop)
pathlib.Path(sys.argv[1]).write_text(str(os.getpid()))
time.sleep(60)
"""

# a bench that waits for one such run in a worker thread, as bench.learning --jobs and bench.grid's workers do
BENCH = """import sys
from concurrent.futures import ThreadPoolExecutor
from bench.timed import run_timed
from common import run_cli
def main(_):
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run_timed, "-c", sys.argv[1], sys.argv[2], sys.argv[3]).result().returncode
run_cli(main)
"""


def test_a_bench_stopped_on_its_own_stops_the_run_it_waits_for_and_leaves_none_behind(tmp_path):
    import os
    import signal

    started, stopped = tmp_path / "started", tmp_path / "stopped"
    bench = subprocess.Popen([sys.executable, "-c", BENCH, STOPPABLE, str(started), str(stopped)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(started.read_text())
    bench.send_signal(signal.SIGINT)  # to the bench alone, as `kill -INT` does: not to its process group
    _, stderr = bench.communicate(timeout=30)  # not the child's minute
    assert bench.returncode == 130 and "interrupted" in stderr, stderr
    assert stopped.read_text() == "stopped"  # the run was told, and could save what it had
    assert not os.path.exists(f"/proc/{child}")  # and it was waited for: nothing left running


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_the_cells_of_workers_that_died_are_run_by_the_next_command(tmp_path, monkeypatch):
    import tune
    from bench.grid import open_grid, work

    monkeypatch.setattr(tune, "STALE_SECONDS", 1)
    cells = ["Pong|drq|2", "Boxing|drq|2"]
    storage = f"sqlite:///{tmp_path / 'grid.db'}"
    dead = open_grid(storage, "test", cells)
    for _ in cells:  # two workers took a cell each and claimed it, then were killed (no Ctrl-C, no SIGTERM)
        trial = dead.ask()
        trial.suggest_categorical("cell", cells)
        trial.set_user_attr("claimed", trial.number)
        dead._storage.record_heartbeat(trial._trial_id)
    time.sleep(2.5)  # SQLite's clock counts whole seconds
    ran: list[str] = []
    assert work(open_grid(storage, "test", cells), cells, lambda cell: ran.append(cell) or {"final": 0.0}, 2) == []
    assert sorted(ran) == sorted(cells)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_two_workers_asking_at_once_are_not_handed_the_same_waiting_cell(tmp_path, monkeypatch):
    import optuna
    from optuna.storages._rdb import models

    from bench.grid import open_grid, put_back, work

    cells = ["a|x|0", "b|x|0"]
    study = open_grid(f"sqlite:///{tmp_path / 'grid.db'}", "test", cells)
    stopped = study.ask()
    stopped.suggest_categorical("cell", cells)
    study.tell(stopped, state=optuna.trial.TrialState.FAIL)
    put_back(study, study.trials[stopped.number])  # a waiting trial, which Optuna hands to the next worker that asks
    find = models.TrialModel.find_or_raise_by_id

    def slowly(*args, **kwargs) -> models.TrialModel:  # SQLite has no row lock: the second reads before the first
        trial = find(*args, **kwargs)  # has written that the trial runs (Optuna reads, then writes, its state)
        time.sleep(0.3)
        return trial

    monkeypatch.setattr(models.TrialModel, "find_or_raise_by_id", slowly)
    ran: list[str] = []
    assert work(study, cells, lambda cell: ran.append(cell) or time.sleep(1) or {"final": 0.0}, jobs=2) == []
    assert sorted(ran) == cells
