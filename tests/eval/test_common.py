"""The jobs' shared conventions: an output folder is locked while a run writes to it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hf_hyper.eval import cli
from hf_hyper.eval.common import JobError, output_dir, release_output_locks

HOLD = """
import sys, time
from hf_hyper.eval.common import output_dir
output_dir(sys.argv[1])
print("held", flush=True)
time.sleep(60)
"""


def test_a_second_run_into_a_busy_folder_stops_with_one_line(tmp_path, capsys):
    out = tmp_path / "busy"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(JobError, match="another hf-hyper run is writing to"):
            output_dir(out)
        args = ["ppl", "--cpu", "--lengths", "64", "--max-windows", "1", "--output-dir", str(out)]
        assert cli.main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert "another hf-hyper run is writing to --output-dir" in err
        assert not (out / "ppl.json").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder's end releases the folder; this process's own lock ends with its job
    assert output_dir(out) == out
    assert output_dir(out) == out  # a process may ask again for a folder it holds
    release_output_locks()


def test_a_finished_run_leaves_no_lock_file_behind(tmp_path):
    out = output_dir(tmp_path / "done")
    (out / "ppl.json").write_text("{}")
    assert any(path.name.startswith(".hf_hyper-running") for path in out.iterdir())
    release_output_locks()
    assert [path.name for path in out.iterdir()] == ["ppl.json"]
    assert output_dir(out) == out  # and the folder can be taken again
    release_output_locks()
