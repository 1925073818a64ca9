"""`driftline up` with no Kafka or S3 configured starts the local stack itself, and `driftline down`
stops what `up` started. The session's stack (the lead's, on the default ports) is left alone: this
platform's stack has a state directory and ports of its own."""

from __future__ import annotations

import json
import subprocess
import time

from cli_support import Cli, cli_env, platform_processes
from services.devstack.supervisor import free_port_pair


def leftovers(cli: Cli, state_dir) -> list[str]:
    """Processes of this platform: by its topic prefix in their environment, or its state dir in `ps`."""
    ps = subprocess.run(["ps", "-eo", "pid=,stat=,args="], capture_output=True, text=True, check=True).stdout
    by_args = []
    for line in ps.splitlines():
        pid, stat, args = line.split(None, 2)
        if str(state_dir) in args and not stat.startswith("Z"):
            by_args.append(f"{pid}: {args}")
    return platform_processes(cli.env) + by_args


def test_up_without_configured_infrastructure_starts_the_local_stack_and_down_stops_it(tmp_path):
    state_dir = tmp_path / "devstack"
    kafka_port, s3_port = free_port_pair(), free_port_pair()
    env = cli_env(tmp_path, DRIFTLINE_STATE_DIR=str(state_dir), DRIFTLINE_DEVSTACK_KAFKA_PORT=str(kafka_port),
                  DRIFTLINE_DEVSTACK_S3_PORT=str(s3_port))
    for key in [k for k in env if k.startswith(("DRIFTLINE_KAFKA_", "DRIFTLINE_S3_"))]:
        del env[key]  # nothing configured: no address, no credentials
    cli = Cli(env)
    try:
        up = cli.run("up", "--any-ports", "--json", timeout=120)
        assert up.returncode == 0, f"up failed:\n{up.stdout}\n{up.stderr}\n{cli.logs_hint()}"
        assert "starting the local stack (kafka, s3" in up.stderr
        state = json.loads((cli.home / "platform.json").read_text())
        assert state["stack_started"] == ["kafka", "s3"]
        assert state["env"]["DRIFTLINE_KAFKA_BOOTSTRAP"] == f"127.0.0.1:{kafka_port}"
        assert state["env"]["DRIFTLINE_S3_ENDPOINT"] == f"127.0.0.1:{s3_port}"
        assert all(row["health"] in ("SERVING", "RUNNING") for row in json.loads(up.stdout)["services"])
        assert cli.run("status").returncode == 0  # Kafka (consumer lag) and S3 answer from the state file alone
    finally:
        down = cli.run("down", "--json", timeout=120)
    assert down.returncode == 0, down.stderr
    stopped = json.loads(down.stdout)["stopped"]
    assert stopped["kafka"] == stopped["s3"] == "stopped" and stopped["supervisor"] == "stopped"
    deadline = time.monotonic() + 10  # init reaps orphans when it gets to them
    while leftovers(cli, state_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert leftovers(cli, state_dir) == []
    assert json.loads((cli.home / "platform.json").read_text())["stack_started"] == []
