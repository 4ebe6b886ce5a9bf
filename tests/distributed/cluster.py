"""A Ray cluster of two nodes on this machine, each its own raylet started by `ray start`, for the tests that
lose a node: every process of it lives in this test run's network namespace (`make test-ray` makes one with
only loopback), so the tests find, kill and clean up exactly their own processes by that namespace."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HEAD_PORT = 6390  # the namespace is this run's own: fixed ports collide with nothing
RAY = str(Path(sys.executable).with_name("ray"))


def own_namespace() -> str:
    return os.readlink("/proc/self/ns/net")


def processes(match: str = "") -> list[int]:
    """Processes of this network namespace (so of this test run) whose command line holds `match`."""
    mine, pids = own_namespace(), []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if os.readlink(proc / "ns/net") == mine and match.encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


@dataclass
class Node:
    name: str
    manager_port: int
    cpus: int
    id: str = ""


@dataclass
class TwoNodes:
    """A head (where a driver started on this machine attaches) and a worker node, both at 127.0.0.1."""

    temp: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="ray2", dir="/tmp"))
    head: Node = field(default_factory=lambda: Node("head", 6391, 1))
    worker: Node = field(default_factory=lambda: Node("worker", 6392, 2))
    elsewhere: Node = field(default_factory=lambda: Node("elsewhere", 6393, 0))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{HEAD_PORT}"

    def start(self) -> TwoNodes:
        self._ray("start", "--head", f"--port={HEAD_PORT}", f"--temp-dir={self.temp}", "--include-dashboard=false",
                  *self._node_args(self.head))
        self.start_worker()
        return self

    def start_worker(self) -> None:
        self._wait_for({self.head.manager_port})  # a worker killed before is gone first
        self._ray("start", f"--address={self.address}", *self._node_args(self.worker))
        self._wait_for({self.head.manager_port, self.worker.manager_port})

    def heal(self) -> None:
        """Back to the head and the worker, whatever the test before left: a test that lost the worker and
        failed before starting it again, or a third node still up."""
        ports = set(self.alive().values())
        if self.elsewhere.manager_port in ports:
            self.stop_elsewhere()
        if self.worker.manager_port not in ports:
            self.start_worker()

    def start_elsewhere(self, name: str) -> None:
        """A third node (no CPUs) that says it runs on the host `name`: its own UTS namespace, as another
        machine would be (the network stays this namespace's loopback)."""
        node = self.elsewhere = Node(name, 6393, 0)
        r = subprocess.run(["unshare", "--uts", "sh", "-c", f'hostname {name} && exec "$@"', "_", RAY, "start",
                            f"--address={self.address}", *self._node_args(node)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        self._wait_for({self.head.manager_port, self.worker.manager_port, node.manager_port})

    def stop_elsewhere(self) -> None:
        self.kill(self.elsewhere)
        self._wait_for({self.head.manager_port, self.worker.manager_port})

    def _node_args(self, node: Node) -> list[str]:
        return ["--node-ip-address=127.0.0.1", f"--node-manager-port={node.manager_port}", f"--num-cpus={node.cpus}",
                "--disable-usage-stats"]

    def _ray(self, *args: str) -> None:
        r = subprocess.run([RAY, *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr

    def ask(self, expression: str) -> Any:
        """`expression` (JSON-able) evaluated by a driver of this cluster (this process is a driver of
        another)."""
        code = (f"import json, ray, ray._private.state as state; ray.init(address='{self.address}', "
                f"logging_level='ERROR', log_to_driver=False); print('answer:', json.dumps({expression}, default=str))")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        [answer] = [line for line in r.stdout.splitlines() if line.startswith("answer: ")]  # Ray may print too
        return json.loads(answer.removeprefix("answer: "))

    def alive(self) -> dict[str, int]:
        """Node id -> node manager port of every node the cluster holds alive."""
        return dict(self.ask("{n['NodeID']: n['NodeManagerPort'] for n in ray.nodes() if n['Alive']}"))

    def actors(self, *classes: str) -> list[dict[str, Any]]:
        """The cluster's actors of these classes, dead or alive (Ray's actor table: State, NumRestarts, Pid,
        Address.NodeID, OwnerAddress.NodeID: the node of the driver that made it)."""
        return [a for a in self.ask("list(state.actors().values())") if a["ActorClassName"] in classes]

    def _wait_for(self, ports: set[int]) -> None:
        """Until the cluster holds alive exactly one node on each of these node manager ports (a node killed
        is held alive until its health checks fail: 15 s and more on a loaded machine)."""
        deadline = time.monotonic() + 180
        while sorted((alive := self.alive()).values()) != sorted(ports):
            assert time.monotonic() < deadline, (alive, ports)
            time.sleep(0.5)
        for node in (self.head, self.worker):
            node.id = next((i for i, port in alive.items() if port == node.manager_port), node.id)

    def raylet(self, node: Node) -> int:
        [pid] = [p for p in processes("raylet") if f"--node_manager_port={node.manager_port}".encode()
                 in Path(f"/proc/{p}/cmdline").read_bytes()]
        return pid

    def kill(self, node: Node) -> None:
        """kill -9 of the node's raylet: its workers and agents go with it, as when a machine is lost."""
        os.kill(self.raylet(node), signal.SIGKILL)

    def stop(self) -> None:
        """The cluster's processes (of this namespace, naming this cluster's temp dir), then the temp dir; a
        node's workers end with its raylet."""
        ours = set(processes(self.temp))
        for pid in ours | {p for p in processes() if parent(p) in ours}:  # with the workers and agents
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                continue
        shutil.rmtree(self.temp, ignore_errors=True)
