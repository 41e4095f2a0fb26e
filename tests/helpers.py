"""Small helpers shared by the test modules."""
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_tool(script, *args, timeout=600, cwd=None, env=None):
    """Run ``tools/<script>`` with this interpreter; return the process."""
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / 'tools' / script), *map(str, args)],
        capture_output=True, text=True, timeout=timeout,
        cwd=cwd or REPO_ROOT, env=env)
