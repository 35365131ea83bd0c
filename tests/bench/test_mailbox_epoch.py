"""bench.mailbox's epoch phase (issue 15) runs end to end in a small run: the
claims hand out every one-time prekey once (the bench checks it and fails
otherwise), every v2 and v1 wrap sent opens to its key at its recipient, the
sends of both kinds are drained, and the table shows the figures."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.live]


def test_mailbox_bench_epoch_phase_small_run(tmp_path):
    out = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.mailbox", "-M", "20", "-K", "2", "--notify-samples", "5", "--senders", "2",
         "--web-processes", "1", "--mailbox-depth", "20", "--mailbox-rounds", "1", "--purge-rows", "0",
         "--epochs", "3", "--epoch-sends", "8", "--epoch-devices", "2,3", "--json", str(out)],
        cwd=Path(__file__).resolve().parents[2], check=True, timeout=170, capture_output=True, text=True)
    figures = json.loads(out.read_text())
    (run,) = figures["runs"].values()
    assert [e["devices"] for e in run["epoch"]] == [2, 3]
    for e in run["epoch"]:
        assert e["epochs"] == 3 and e["sends"] == 8
        assert e["claim"]["one_time_handed_out"] == 3 * e["devices"]
        assert e["drain"]["messages"] == 2 * 8 * e["devices"]  # the v2 and the v1 sends, at every device
        assert e["wrap"]["v2_client_ms_per_epoch"] > 0 and e["wrap"]["v1_client_ms_per_epoch"] > 0
        assert e["unwrap"]["v2_client_ms_per_wrap"] > 0 and e["send"]["v2_server_cpu_ms"] is not None
    assert figures["queries"]["claim"] > 0
    assert "new epoch, 3 recipient devices: prekey claim" in done.stdout
