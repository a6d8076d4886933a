"""WASI 0.2 components: run through wasi:cli/run, with WASI sockets in the
task's own network namespace."""

import subprocess
import time

SERVER = "wasmlet.test/tcp-hello:latest"


def instance_pid(ctd, task):
    line = next(l for l in ctd.ctr("tasks", "ls").stdout.splitlines() if l.startswith(task + " "))
    return int(line.split()[1])


def fetch_in_netns(pid, port=8080):
    """Connects to 127.0.0.1:port inside the network namespace of pid."""
    client = ("import socket,sys\n"
              f"s = socket.create_connection(('127.0.0.1', {port}), timeout=5)\n"
              "data = b''\n"
              "while chunk := s.recv(100): data += chunk\n"
              "sys.stdout.write(data.decode())")
    res = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "python3", "-c", client],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_component_serves_tcp_in_its_network_namespace(clean):
    assert clean.run(SERVER, "tcp-server", detach=True).returncode == 0
    pid = instance_pid(clean, "tcp-server")
    deadline = time.monotonic() + 5
    while "tcp-server" in clean.tasks() and time.monotonic() < deadline:
        try:
            first = fetch_in_netns(pid)
            break
        except AssertionError:
            time.sleep(0.1)  # not listening yet
    assert first == "hello from wasm over tcp #1\n"
    assert fetch_in_netns(pid) == "hello from wasm over tcp #2\n"
    clean.task_kill("tcp-server", "SIGTERM")
    assert clean.task_wait("tcp-server", timeout=5) == "STOPPED"
    assert clean.task_delete("tcp-server") == 143


def test_export_suffix_on_a_component_is_refused_clearly(clean):
    res = clean.run(SERVER, "tcp-export", "/tcp-hello.wasm#main")
    assert res.returncode != 0
    assert "/tcp-hello.wasm is a component, which runs wasi:cli/run" in res.stderr
