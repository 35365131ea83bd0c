"""The web client's SDK (web/src/client/live*.test.ts, vitest in Node) against a live
server of this module: the whole §6b flow without a browser (prekeys at registration,
v2 both ways, a re-sent wrap not claimed again, erasure at the ACK, refill, rotation,
sender keys age, the v1 downgrade refused, and the forward-secrecy property itself).
Skips without Node.js >= 20 and web/node_modules (fails instead under CI=true)."""
import os
import shutil
import subprocess

import pytest

from tests.live import BASE_DIR

pytestmark = [pytest.mark.live]

WEB = BASE_DIR / "web"


def test_sdk_against_a_live_server(server):
    npx = shutil.which("npx")
    if npx is None or not (WEB / "node_modules" / ".bin" / "vitest").exists():
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true: Node.js and web/node_modules are needed for the SDK's live tests")
        pytest.skip("no Node.js or web/node_modules: the SDK's live tests are skipped")
    proc = subprocess.run([npx, "vitest", "run", "src/client/live.test.ts", "src/client/live-fs.test.ts"],
                          cwd=WEB, capture_output=True, text=True, timeout=170,
                          env={**os.environ, "DECENTCOM_LIVE_URL": server.url, "NO_COLOR": "1"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "skipped" not in proc.stdout.split("Tests")[-1], proc.stdout[-2000:]  # every live test ran
