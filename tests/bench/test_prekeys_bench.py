"""bench.prekeys runs end to end (a small run): every phase answers, and the
steady epochs drained every delivery they sent."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.live]


def test_prekeys_bench_small_run(tmp_path):
    out = tmp_path / "figures.json"
    subprocess.run([sys.executable, "-m", "bench.prekeys", "-K", "2", "--epochs", "3", "--steady", "8",
                    "--json", str(out)], cwd=Path(__file__).resolve().parents[2], check=True, timeout=170,
                   capture_output=True)
    figures = json.loads(out.read_text())
    assert figures["recipients"] == 2
    assert figures["claim"]["n"] == 3 and figures["new_epoch_v2"]["n"] == 3
    assert figures["steady_under_v1_key"]["send"]["n"] == figures["steady_under_v2_key"]["send"]["n"] == 8
    assert figures["client"]["v2_check_and_wrap_us"] > 0
