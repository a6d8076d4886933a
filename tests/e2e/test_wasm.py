"""End-to-end scenarios of wasm tasks through a real containerd and the shim."""

import glob
import hashlib
import os
import subprocess
import time

import pytest

from harness import RUNC_RUNTIME

HELLO = "wasmlet.test/hello:latest"
HELLO_NATIVE = "wasmlet.test/hello-native:latest"
EXIT_CODE = "wasmlet.test/exit-code:latest"
TRAP = "wasmlet.test/trap:latest"
SLEEP = "wasmlet.test/sleep:latest"
FILES = "wasmlet.test/files:latest"
HOG = "wasmlet.test/memory-hog:latest"
BUSYBOX = "wasmlet.test/busybox:latest"

MIB = 1024 * 1024
HELLO_WASM = os.path.join(os.path.dirname(__file__), "..", "..", "images", "workloads", "target",
                          "wasm32-wasip1", "release", "hello.wasm")


def test_hello_gets_args_and_env(clean):
    res = clean.run(HELLO, "hello-args", "/hello.wasm", "a", "b c",
                    env={"HELLO_NAME": "e2e", "HELLO_A": "1", "OTHER": "hidden"})
    assert (res.returncode, res.stderr) == (0, "")
    assert res.stdout == ("Hello from wasmlet!\nargs: a b c\n"
                          "env: HELLO_A=1\nenv: HELLO_NAME=e2e\n")


def test_image_entrypoint_is_used_without_args(clean):
    res = clean.run(HELLO, "hello-plain")
    assert (res.returncode, res.stdout) == (0, "Hello from wasmlet!\nargs: \n")


def test_proc_exit_code_is_the_task_exit_code(clean):
    res = clean.run(EXIT_CODE, "exit-42")
    assert (res.returncode, res.stdout) == (42, "exiting with 42\n")


def test_trap_exits_134_with_message_and_backtrace(clean):
    res = clean.run(TRAP, "trap")
    assert res.returncode == 134
    assert res.stdout == "about to trap\n"
    assert "unreachable" in res.stderr
    assert "wasm backtrace" in res.stderr


def test_trap_message_goes_to_the_termination_log(clean, tmp_path):
    log = tmp_path / "termination-log"
    log.write_text("")
    res = clean.run(TRAP, "trap-termlog", mounts=[(log, "/dev/termination-log", "rbind:rw")])
    assert res.returncode == 134
    assert "unreachable" in log.read_text()


def test_custom_export_runs_instead_of_start(clean):
    res = clean.run(HELLO, "hello-greet", "/hello.wasm#greet")
    assert (res.returncode, res.stdout) == (0, "greet: called via #export\n")


def test_mounts_read_only_read_write_and_nothing_outside(clean, tmp_path):
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    (ro / "input.txt").write_text("from the host\n")
    res = clean.run(FILES, "files", mounts=[(ro, "/config", "rbind:ro"), (rw, "/data", "rbind:rw")])
    lines = res.stdout.splitlines()
    assert res.returncode == 0, res.stdout + res.stderr
    assert lines[0] == "read: from the host"
    assert lines[1] == "wrote: /data/output.txt"
    assert lines[2].startswith("denied: /config/denied.txt: ")
    assert lines[3].startswith("denied: /../escape.txt: ")
    assert (rw / "output.txt").read_text() == "written by wasm"
    assert not (ro / "denied.txt").exists()
    assert glob.glob(os.path.join(clean.dir, "**", "escape.txt"), recursive=True) == []


def test_memory_limit_ends_the_task_not_the_node(clean):
    # The task ends as out of memory: 137 and a /tasks/oom event, which
    # containerd's CRI turns into the OOMKilled reason.
    events = subprocess.Popen(clean.ctr_command("events"), stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)
        for limit in (32, 64):
            res = clean.run(HOG, f"hog-{limit}", memory_limit=limit * MIB)
            assert res.returncode == 137, res.stderr
            assert f"allocated {limit} MiB" not in res.stdout
        time.sleep(0.3)
    finally:
        events.terminate()
    oom = [line for line in events.communicate()[0].splitlines() if "/tasks/oom" in line]
    assert [o for o in oom if '"hog-32"' in o] and [o for o in oom if '"hog-64"' in o], oom
    # The same program within its limit, and the node, are fine.
    res = clean.run(HOG, "hog-small", "/memory-hog.wasm", "16", memory_limit=128 * MIB)
    assert (res.returncode, res.stdout.splitlines()[-1]) == (0, "done 16 MiB")


def test_guest_meets_its_memory_cap_before_the_oom_killer(clean):
    # Linear memory is capped below the cgroup limit by what the engine
    # itself uses, so the guest fails cleanly and says why.
    for limit in (32, 64, 200):
        res = clean.run(HOG, f"hog-cap-{limit}", memory_limit=limit * MIB)
        assert res.returncode == 137
        assert "out of memory: the guest reached its memory limit" in res.stderr


@pytest.mark.parametrize("signal,code", [("SIGTERM", 143), ("SIGKILL", 137)])
def test_signal_ends_a_running_module_within_a_second(clean, signal, code):
    task = f"sleep-{signal.lower()}"
    assert clean.run(SLEEP, task, detach=True).returncode == 0
    assert clean.tasks()[task] == "RUNNING"
    started = time.monotonic()
    clean.task_kill(task, signal)
    assert clean.task_wait(task, timeout=5) == "STOPPED"
    assert time.monotonic() - started < 1.0
    assert clean.task_delete(task) == code


def test_metrics_of_a_running_task(clean):
    assert clean.run(SLEEP, "sleep-metrics", detach=True).returncode == 0
    res = clean.ctr("tasks", "metrics", "sleep-metrics")
    assert "memory.usage_in_bytes" in res.stdout or "memory.usage" in res.stdout, res.stdout
    assert clean.ctr("tasks", "ps", "sleep-metrics").stdout.count("\n") == 2


@pytest.mark.parametrize("name,image,args,message", [
    ("missing", HELLO, ["/nope.wasm"], "entrypoint /nope.wasm not found in the container rootfs"),
    ("notwasm", "wasmlet.test/bad-notwasm:latest", [],
     "entrypoint /app.wasm is neither a wasm module nor a native executable"),
    ("truncated", "wasmlet.test/bad-truncated:latest", [], "invalid wasm module /app.wasm"),
    ("export", HELLO, ["/hello.wasm#nothere"], "export `nothere` not found in /hello.wasm"),
    ("import", "wasmlet.test/bad-import:latest", [], "cannot satisfy the imports of /app.wasm"),
    ("threads", "wasmlet.test/shared-memory:latest", [],
     "invalid wasm module /shared-memory.wasm: it needs the WebAssembly feature 'threads', which wasmlet does not run"),
])
def test_bad_input_gets_a_clear_error(clean, name, image, args, message):
    res = clean.run(image, f"bad-{name}", *args)
    assert res.returncode != 0
    assert message in res.stderr, res.stderr
    assert message in clean.log_tail(200), "the shim log names the problem too"


def test_unsatisfiable_import_is_named(clean):
    res = clean.run("wasmlet.test/bad-import:latest", "bad-import-name")
    assert "env::missing_function" in res.stderr, res.stderr


def test_native_entrypoint_under_wasmlet_runs_through_runc(clean):
    res = clean.run(HELLO_NATIVE, "native-hello", "/hello", "x", env={"HELLO_RUNC": "1"})
    assert (res.returncode, res.stdout) == (0, "Hello from wasmlet!\nargs: x\nenv: HELLO_RUNC=1\n")
    res = clean.run(BUSYBOX, "native-sh", "/bin/sh", "-c", "echo from sh >&2; exit 3")
    assert (res.returncode, res.stderr) == (3, "from sh\n")


def test_native_task_under_wasmlet_can_be_killed(clean):
    assert clean.run(BUSYBOX, "native-sleep", "/bin/sh", "-c", "sleep 600 & sleep 600", detach=True).returncode == 0
    assert clean.tasks()["native-sleep"] == "RUNNING"
    time.sleep(0.2)
    # ctr tasks ps: a header and one line per process of the container.
    assert clean.ctr("tasks", "ps", "native-sleep").stdout.count("\n") == 3
    clean.task_kill("native-sleep", "SIGKILL")
    assert clean.task_wait("native-sleep", timeout=5) == "STOPPED"
    assert clean.task_delete("native-sleep") == 137


def test_exec_into_a_native_container_under_wasmlet(clean):
    assert clean.run(BUSYBOX, "native-exec", "/bin/sleep", "600", detach=True).returncode == 0
    res = clean.ctr("tasks", "exec", "--exec-id", "e1", "native-exec", "/bin/echo", "from exec", check=False)
    assert (res.returncode, res.stdout) == (0, "from exec\n")
    res = clean.ctr("tasks", "exec", "--exec-id", "e2", "native-exec", "/bin/sh", "-c", "exit 5", check=False)
    assert res.returncode == 5


def test_exec_into_a_wasm_container_is_refused_clearly(clean):
    assert clean.run(SLEEP, "wasm-exec", detach=True).returncode == 0
    res = clean.ctr("tasks", "exec", "--exec-id", "e1", "wasm-exec", "/sleep.wasm", check=False)
    assert res.returncode != 0
    assert "exec is not supported for wasm tasks" in res.stderr


def test_runc_task_runs_beside_wasm_tasks(clean):
    assert clean.run(SLEEP, "side-wasm-sleep", detach=True).returncode == 0
    native = clean.run(BUSYBOX, "side-runc", "/bin/echo", "from runc", runtime=RUNC_RUNTIME)
    assert (native.returncode, native.stdout) == (0, "from runc\n")
    hello_native = clean.run(HELLO_NATIVE, "side-native", "/hello", "x", runtime=RUNC_RUNTIME)
    wasm = clean.run(HELLO, "side-wasm", "/hello.wasm", "x")
    assert hello_native.stdout == wasm.stdout == "Hello from wasmlet!\nargs: x\n"
    assert clean.tasks()["side-wasm-sleep"] == "RUNNING"


def test_second_start_compiles_nothing_and_corrupt_cache_is_rebuilt(clean):
    with open(HELLO_WASM, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    assert clean.run(HELLO, "cache-1").returncode == 0
    [entry] = glob.glob(os.path.join(clean.cache_dir, "*", f"{digest}.cwasm"))
    size = os.path.getsize(entry)
    assert clean.run(HELLO, "cache-2").returncode == 0
    assert "compiled code for /hello.wasm: cache Hit task=cache-2" in clean.log_tail(50)
    with open(entry, "r+b") as f:
        f.truncate(size // 2)
    res = clean.run(HELLO, "cache-3")
    assert (res.returncode, res.stdout.splitlines()[0]) == (0, "Hello from wasmlet!")
    assert "compiled code for /hello.wasm: cache Rebuilt task=cache-3" in clean.log_tail(50)
    assert os.path.getsize(entry) == size


def test_detached_task_can_write_after_its_client_leaves(clean):
    # It prints "done" a second after `ctr run -d` has gone away: that
    # write must not fail the guest.
    assert clean.run(SLEEP, "detached-write", "/sleep.wasm", "1", detach=True).returncode == 0
    assert clean.task_wait("detached-write", timeout=10) == "STOPPED"
    assert clean.task_delete("detached-write") == 0
