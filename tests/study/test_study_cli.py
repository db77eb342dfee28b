"""``portfolio-layers study``: bad input exits 2 with a clear message before any work; a failed task, 1."""

from __future__ import annotations

import socket
import sys

import pytest
from study_helpers import SerialExecutor

import portfolio_layers.study.cli as study_cli
from portfolio_layers.cli import main

CONFIG = """prices = "sp500"
start = "2019-01-01"
end = "2020-12-31"
trade_start = "2020-06-01"
strategies = ["equal_weight", "e2e"]
retrain_every = 1000
train_window = 300

[params.e2e]
window = 5000
"""


def _run(capsys, *args):
    code = main(["study", *args])
    return code, capsys.readouterr()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--seeds", "3-1"], "--seeds range '3-1' must go up"),
        (["--seeds", "0,x"], "--seeds item 'x' is not a seed"),
        (["--seeds", "0", "--executor", "dask"], "unknown executor 'dask'; choose one of local, ray"),
        (["--seeds", "0", "--workers", "0"], "--workers must be a positive integer"),
        (["--seeds", "0", "--address", "auto"], "--address is for --executor ray"),
    ],
)
def test_bad_input_exits_2(tmp_path, capsys, args, words):
    code, captured = _run(capsys, *args, "--out", str(tmp_path / "s"))
    assert code == 2 and words in captured.err
    assert "Traceback" not in captured.err and not (tmp_path / "s").exists()


def test_ray_missing_says_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    code, captured = _run(capsys, "--seeds", "0", "--executor", "ray", "--out", str(tmp_path / "s"))
    assert code == 2 and 'pip install -e ".[ray]"' in captured.err


def test_unreachable_ray_address_exits_2(tmp_path, capsys):
    pytest.importorskip("ray", reason='ray is not installed (pip install -e ".[ray]")')
    with socket.socket() as sock:  # a free port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    address = f"127.0.0.1:{port}"
    code, captured = _run(
        capsys, "--seeds", "0", "--executor", "ray", "--address", address, "--out", str(tmp_path / "s")
    )
    assert code == 2 and f"cannot reach a Ray cluster at {address}" in captured.err
    assert "ray start --head" in captured.err.replace("\n", " ")
    code, captured = _run(
        capsys, "--seeds", "0", "--executor", "ray", "--address", address, "--workers", "2", "--out", "s"
    )
    assert code == 2 and "--workers sets the CPUs of a local Ray instance" in captured.err


def test_a_failed_task_exits_1_after_the_others(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(study_cli, "make_executor", lambda *a, **k: SerialExecutor())
    config = tmp_path / "c.toml"
    config.write_text(CONFIG)
    out = tmp_path / "s"
    code, captured = _run(capsys, "--config", str(config), "--seeds", "0", "--out", str(out), "--quiet")
    assert code == 1
    assert "task e2e-seed0 failed: DataError" in captured.err.replace("\n", " ")
    assert "| equal_weight | config | 1 |" in captured.out
    assert (out / "runs" / "equal_weight-seed0" / "report.html").is_file()
