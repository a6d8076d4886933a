"""Native containers under wasmlet against the same under runc: differential checks.

In a pod with runtimeClassName wasmlet, the sandbox and every native
(non-wasm) container are run by runc inside our shim; in a pod without one,
containerd's own runc shim runs them. A Kubernetes user should not be able
to tell the two apart. Each check runs one scenario twice, in a pod of each
handler, one after the other, and reduces what CRI answered to plain dicts
("facts"):

    container state, reason and exit code     {"ok": True, "state": "CONTAINER_EXITED", ...}
    a call that failed, by its gRPC code      {"ok": False, "code": "UNKNOWN"}
    which stats fields are there, non-zero    {"cpu.usage_core_nano_seconds": ">0", ...}
    what a terminal printed, its exit status  {"size": "45 123", "exit_code": 5, ...}

and what each run left behind (`leftovers`). It then checks that runc's facts
are what Kubernetes users expect (so the test cannot pass with both wrong),
and compares them with `assert wasmlet == runc`: any difference between the
two shims fails, listed fact by fact. Error texts are not compared (they
differ between the shims by nature); they are in the message, with the
terminal output, as each side's notes.

Each check is a function check(kubelet, leftovers), leftovers() listing
what the node still holds (it must be [] at the end): tests/e2e/
test_native_parity.py runs CHECKS against each containerd version, the VM
lane (tests/vm/guest_lane.py) NODE_CHECKS on cgroup v2 with either driver.

Every compared container is busybox. The wasmlet pod also runs a wasm sleep
container (started first, given resources that keep the pod's QoS class), so
that the native containers share their shim with a wasm one as in a real
hybrid pod; it is left out of every fact. The last check is wasmlet's alone:
an update of a wasm container's cpu and cpuset applies, and one of its
memory is refused, saying why.

Scenario by scenario, each test's runc answers are what runc's shim gives
on containerd 1.6.20, 1.7.24 and 2.1.9 alike.
"""

import contextlib
import copy
import json
import os
import re
import time

import grpc
try:
    import websocket  # CRI streaming; the VM node has no terminal checks, nor this module
except ImportError:
    websocket = None

from kubelet import v1
from pods import Pod

HANDLERS = ("runc", "wasmlet")
BUSYBOX = "wasmlet.test/busybox:latest"
WASM_SLEEP = "wasmlet.test/sleep:latest"
WASM_SIDECAR = "wasm-sleep"  # the wasmlet pod's wasm container
# The sidecar's resources for each QoS class of the busybox containers, so
# that it does not change the pod's class (and with it the pod's cgroup).
SIDECAR_RESOURCES = {
    "BestEffort": {},
    "Burstable": {"limits": {"memory": "64Mi"}, "requests": {"memory": "16Mi"}},
    "Guaranteed": {"limits": {"memory": "64Mi", "cpu": "100m"}},
}
TIMEOUT = 60  # seconds, for any one wait
RUNNING, EXITED = v1.CONTAINER_RUNNING, v1.CONTAINER_EXITED
# channel.k8s.io (v4): the first byte of every WebSocket message.
STDIN, STDOUT, STDERR, STATUS, RESIZE = 0, 1, 2, 3, 4
OK = {"ok": True}
ABSENT = "(not reached)"  # a fact of a step the scenario did not get to


def status(state, reason="", exit_code=0):
    """The fact of a ContainerStatus call: {"ok", "state", "reason", "exit_code"}."""
    return {"ok": True, "state": f"CONTAINER_{state}", "reason": reason, "exit_code": exit_code}


def status_fact(container_status):
    return {"state": v1.ContainerState.Name(container_status.state), "reason": container_status.reason,
            "exit_code": container_status.exit_code}


# ---- pods -------------------------------------------------------------------

def pod(handler, name, containers, sidecar=True):
    """A Pod `name` of the given containers (manifest dicts; busybox unless
    they name an image). For wasmlet with runtimeClassName wasmlet and, if
    sidecar, the wasm sleep container first."""
    containers = [{"image": BUSYBOX, **copy.deepcopy(c)} for c in containers]

    def document(spec_containers):
        spec = {"restartPolicy": "Never", "containers": spec_containers}
        if handler == "wasmlet":
            spec["runtimeClassName"] = "wasmlet"
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"parity-{name}-{handler}", "namespace": "default"}, "spec": spec}

    if handler == "wasmlet" and sidecar:
        qos = Pod(document(containers)).qos_class()
        containers = [{"name": WASM_SIDECAR, "image": WASM_SLEEP,
                       "resources": copy.deepcopy(SIDECAR_RESOURCES[qos])}] + containers
        made = Pod(document(containers))
        assert made.qos_class() == qos, "the wasm sidecar changed the pod's QoS class"
        return made
    return Pod(document(containers))


class Abandoned(Exception):
    """A step the rest of a scenario needs failed; the facts so far stand."""


class Side:
    """One handler's run of a scenario: `facts`, its reduced CRI answers
    (compared), and `notes`, what explains them (error texts, terminal output)."""

    def __init__(self, kubelet, handler):
        self.kubelet, self.handler = kubelet, handler
        self.facts, self.notes = {}, []

    def call(self, key, function, *args, reduce=None, required=True, **kwargs):
        """A CRI call whose outcome is the fact `key`: {"ok": True} and what
        reduce(result) makes of its result, or {"ok": False, "code": <gRPC
        code>}. Returns the result; None if it failed, unless required: then
        the scenario ends here."""
        try:
            result = function(*args, **kwargs)
        except grpc.RpcError as e:
            self.facts[key] = {"ok": False, "code": e.code().name}
            self.notes.append(f"{key}: {e.code().name}: {e.details()}")
            if required:
                raise Abandoned(key) from e
            return None
        self.facts[key] = {**OK, **(reduce(result) if reduce else {})}
        return result

    @contextlib.contextmanager
    def running_pod(self, name, containers, sidecar=True):
        """This side's pod for the scenario, its sandbox up (and in a
        wasmlet pod the wasm sidecar running); yields (pod, sandbox id);
        stopped and removed afterwards, as kubelet deletes a pod."""
        the_pod = pod(self.handler, name, containers, sidecar)
        with self.kubelet.running_pod(the_pod) as sandbox_id:
            if WASM_SIDECAR in the_pod.containers:
                sidecar_id = self.kubelet.create_container(the_pod, sandbox_id, WASM_SIDECAR)
                self.kubelet.start_container(sidecar_id)
                self.kubelet.wait_container(sidecar_id, RUNNING, timeout=TIMEOUT)
            yield the_pod, sandbox_id

    def create(self, the_pod, sandbox_id, name):
        return self.call(f"{name}: CreateContainer", self.kubelet.create_container, the_pod, sandbox_id, name)

    def start(self, the_pod, sandbox_id, name, state=RUNNING):
        """Create and start container `name`, wait until it is in state
        (running unless told); returns its id."""
        container_id = self.create(the_pod, sandbox_id, name)
        self.call(f"{name}: StartContainer", self.kubelet.start_container, container_id)
        self.wait(f"{name}: status", container_id, state)
        return container_id

    def wait(self, key, container_id, state=EXITED, required=True):
        """Polls ContainerStatus, as kubelet's PLEG relists, until the
        container is in state or has exited, for TIMEOUT at most; the last
        status is the fact `key`. Not in state ends the scenario if required."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            answer = self.call(key, self.kubelet.container_status, container_id, reduce=status_fact)
            if answer.state in (state, EXITED) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if required and answer.state != state:
            raise Abandoned(key)
        return answer


def differential(kubelet, leftovers, scenario):
    """Runs scenario(side) once per handler, runc first; returns
    {handler: Side}. Each side's facts end with what its run left behind."""
    sides = {}
    for handler in HANDLERS:
        side = sides[handler] = Side(kubelet, handler)
        try:
            scenario(side)
        except Abandoned:
            pass
        side.facts["leftovers"] = leftovers()
    return sides


def differences(runc, wasmlet, prefix=""):
    """Lines "key: runc ... != wasmlet ..." of the facts that differ, going
    into facts of the same keys on both sides (such as two stats)."""
    for key in dict.fromkeys([*runc, *wasmlet]):
        ours, theirs = wasmlet.get(key, ABSENT), runc.get(key, ABSENT)
        if ours == theirs:
            continue
        if isinstance(ours, dict) and isinstance(theirs, dict) and ours.keys() == theirs.keys():
            yield from differences(theirs, ours, f"{prefix}{key} / ")
        else:
            yield f"  {prefix}{key}: runc {theirs!r} != wasmlet {ours!r}"


def notes(sides):
    return [f"  {handler} note: {note}" for handler in HANDLERS for note in sides[handler].notes]


def report(sides):
    """The facts in which wasmlet differs from runc, one a line, and the notes."""
    lines = list(differences(sides["runc"].facts, sides["wasmlet"].facts))
    return "\n".join(["wasmlet's answers differ from runc's:"] + lines + notes(sides))


def check_runc(sides, expected):
    """runc's facts named in expected are as given, and its run left nothing behind."""
    runc = sides["runc"].facts
    expected = {**expected, "leftovers": []}
    found = {key: runc.get(key, ABSENT) for key in expected}
    wrong = [f"  {key}: expected {expected[key]!r}, runc gave {found[key]!r}" for key in expected if found[key] != expected[key]]
    assert not wrong, "\n".join(["runc's answers are not what Kubernetes users expect:"] + wrong + notes(sides))


def compare(sides):
    assert sides["wasmlet"].facts == sides["runc"].facts, report(sides)


# ---- 1, 2: OOM kills ---------------------------------------------------------

def oom_scenario(command):
    """A container with a 32Mi memory limit running command, until it exits."""
    def scenario(side):
        container = {"name": "hog", "command": command, "resources": {"limits": {"memory": "32Mi"}}}
        with side.running_pod("oom", [container]) as (the_pod, sandbox_id):
            side.start(the_pod, sandbox_id, "hog", state=EXITED)
    return scenario


def oom_kill_of_the_init_process_gives_the_same_reason_and_exit_code(kubelet, leftovers):
    # tail keeps the line it is in, and /dev/zero has no newline.
    sides = differential(kubelet, leftovers, oom_scenario(["tail", "/dev/zero"]))
    check_runc(sides, {"hog: StartContainer": OK, "hog: status": status("EXITED", "OOMKilled", 137)})
    compare(sides)
    assert leftovers() == []


def oom_kill_of_a_child_process_gives_the_same_reason_and_exit_code(kubelet, leftovers):
    # The kernel kills tail (the cgroup's largest process). runc's shim
    # reports every OOM kill in the container's cgroup (/tasks/oom), and CRI
    # keeps OOMKilled as the reason whatever the exit code. That code is the
    # node's: with cgroupfs sh lives on and exits 7; with the systemd driver
    # the scope's OOMPolicy (stop, systemd's default) may end sh as well.
    sides = differential(kubelet, leftovers, oom_scenario(["sh", "-c", "tail /dev/zero; exit 7"]))
    exit_code = sides["runc"].facts.get("hog: status", {}).get("exit_code")
    check_runc(sides, {"hog: StartContainer": OK, "hog: status": status("EXITED", "OOMKilled", exit_code)})
    compare(sides)
    assert leftovers() == []


# ---- 3: stats ------------------------------------------------------------------

# Stats fields whose zero or non-zero is certain for an idle container, so
# compared as "0" or ">0". Of the others only whether they are there is
# compared ("set"): usage_nano_cores needs an earlier sample, the writable
# layer's use comes from a periodic scan, major faults from page cache luck.
VALUED = {"cpu.timestamp", "cpu.usage_core_nano_seconds", "memory.timestamp", "memory.working_set_bytes",
          "memory.usage_bytes", "memory.rss_bytes", "memory.page_faults", "memory.available_bytes"}


def stats_fact(stats, container_id):
    """Which of a ContainerStats' fields are there ("set", or "0"/">0" for
    those in VALUED), "absent" for those not."""
    fact = {"attributes.id": "matches" if stats.attributes.id == container_id else stats.attributes.id}
    for group in ("cpu", "memory", "writable_layer", "swap"):
        if not stats.HasField(group):
            fact[group] = "absent"
            continue
        fact[group] = "set"
        message = getattr(stats, group)
        for field in message.DESCRIPTOR.fields:
            key = f"{group}.{field.name}"
            if field.message_type is None:  # a plain number: the timestamp
                present, value = True, getattr(message, field.name)
            else:
                present = message.HasField(field.name)
                value = getattr(getattr(message, field.name), "value", None)
            if not present:
                fact[key] = "absent"
            elif key in VALUED:
                fact[key] = ">0" if value else "0"
            else:
                fact[key] = "set"
    return fact


def list_fact(stats_list, container_id):
    """The busybox containers listed by ListContainerStats, and the stats of ours."""
    listed = [s for s in stats_list if s.attributes.metadata.name != WASM_SIDECAR]
    mine = [s for s in listed if s.attributes.id == container_id]
    return {"containers": sorted(s.attributes.metadata.name for s in listed),
            "stats": stats_fact(mine[0], container_id) if mine else "absent"}


def stats_scenario(side):
    container = {"name": "idle", "command": ["sleep", "3600"], "resources": {"limits": {"memory": "64Mi"}}}
    with side.running_pod("stats", [container]) as (the_pod, sandbox_id):
        container_id = side.create(the_pod, sandbox_id, "idle")
        for phase in ("created", "running"):
            if phase == "running":
                side.call("idle: StartContainer", side.kubelet.start_container, container_id)
                side.wait("idle: status", container_id, RUNNING)
            side.call(f"{phase}: ContainerStats", side.kubelet.container_stats, container_id, required=False,
                      reduce=lambda stats: stats_fact(stats, container_id))
            side.call(f"{phase}: ListContainerStats", side.kubelet.list_container_stats, sandbox_id,
                      required=False, reduce=lambda stats: list_fact(stats, container_id))


def stats_of_a_created_then_running_container_have_the_same_fields(kubelet, leftovers):
    sides = differential(kubelet, leftovers, stats_scenario)
    runc = sides["runc"].facts
    # Until it starts, a CRI container has no task, so no cpu or memory
    # numbers; ContainerStats fails, while the list shows it without them.
    check_runc(sides, {"created: ContainerStats": {"ok": False, "code": "UNKNOWN"},
                       "idle: status": status("RUNNING")})
    created = runc.get("created: ListContainerStats", {})
    stats = created.get("stats") if isinstance(created.get("stats"), dict) else {}
    assert (created.get("containers"), stats.get("cpu"), stats.get("memory")) == (["idle"], "absent", "absent"), \
        created
    # Running, kubectl top has its numbers.
    for key in ("running: ContainerStats", "running: ListContainerStats"):
        fact = runc.get(key, {})
        fact = fact.get("stats", {}) if key.endswith(": ListContainerStats") else fact
        numbers = {field: fact.get(field) for field in ("cpu.timestamp", "cpu.usage_core_nano_seconds",
                                                        "memory.working_set_bytes", "memory.usage_bytes",
                                                        "memory.available_bytes")}
        assert set(numbers.values()) == {">0"}, (key, fact)
    compare(sides)
    assert leftovers() == []


# ---- 4: stop -------------------------------------------------------------------

def stop_fact(seconds, grace):
    """How long a StopContainer took: about its grace period (it waited
    for the SIGKILL), under 2 s (it did not), or how many seconds."""
    if 0.9 * grace <= seconds < grace + 5:
        return "the grace period"
    return "under 2 s" if seconds < 2 else f"{seconds:.0f} s"


def stop_scenario(side):
    containers = [
        {"name": "exits-3", "command": ["sh", "-c", "exit 3"]},
        # sh is PID 1 of its PID namespace, which the kernel spares the
        # signals it has no handler for: trap '' only says what happens anyway.
        {"name": "ignores-term", "command": ["sh", "-c", "trap '' TERM; while true; do sleep 1; done"]},
        # `wait` returns as soon as a trapped signal arrives.
        {"name": "exits-on-term",
         "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1 & wait $!; done"]},
    ]
    with side.running_pod("stop", containers) as (the_pod, sandbox_id):
        exited = side.start(the_pod, sandbox_id, "exits-3", state=EXITED)
        ignores = side.start(the_pod, sandbox_id, "ignores-term")
        exits = side.start(the_pod, sandbox_id, "exits-on-term")
        for name, container_id, grace in (("exits-3", exited, 30), ("ignores-term", ignores, 1),
                                          ("exits-on-term", exits, 30)):
            started = time.monotonic()
            side.call(f"{name}: StopContainer", side.kubelet.stop_container, container_id, grace, required=False)
            took = time.monotonic() - started
            side.notes.append(f"{name}: StopContainer with {grace} s of grace took {took:.2f} s")
            side.facts[f"{name}: StopContainer took"] = stop_fact(took, grace)
            side.call(f"{name}: status after stop", side.kubelet.container_status, container_id, reduce=status_fact,
                      required=False)
        side.call("StopPodSandbox", side.kubelet.stop_pod_sandbox, sandbox_id)
        side.call("sandbox after stop", side.kubelet.pod_sandbox_status, sandbox_id,
                  reduce=lambda s: {"state": v1.PodSandboxState.Name(s.state)})


def stop_of_exited_term_ignoring_and_term_handling_containers_gives_the_same_statuses(kubelet, leftovers):
    sides = differential(kubelet, leftovers, stop_scenario)
    check_runc(sides, {
        "exits-3: status": status("EXITED", "Error", 3),
        "exits-3: StopContainer": OK,
        "exits-3: StopContainer took": "under 2 s",
        "exits-3: status after stop": status("EXITED", "Error", 3),
        "ignores-term: StopContainer": OK,
        "ignores-term: StopContainer took": "the grace period",
        "ignores-term: status after stop": status("EXITED", "Error", 137),
        "exits-on-term: StopContainer": OK,
        "exits-on-term: StopContainer took": "under 2 s",
        "exits-on-term: status after stop": status("EXITED", "Completed", 0),
        "StopPodSandbox": OK,
        "sandbox after stop": {"ok": True, "state": "SANDBOX_NOTREADY"},
    })
    compare(sides)
    assert leftovers() == []


# ---- 5, 6: terminals -----------------------------------------------------------

class Stream:
    """A streaming session (exec or attach, what `kubectl -it` opens) with
    containerd's streaming server over WebSocket, channel.k8s.io v4: each
    message is one channel byte and then the data. What arrives is kept per
    channel; once the server has closed, sending does nothing."""

    def __init__(self, url):
        self.ws = websocket.create_connection(url.replace("http://", "ws://", 1), timeout=TIMEOUT,
                                              subprotocols=["v4.channel.k8s.io"])
        self.received = {}
        self.closed = False

    def close(self):
        self.ws.close()

    def send(self, channel, data):
        if self.closed:
            return
        try:
            self.ws.send_binary(bytes([channel]) + data)
        except (websocket.WebSocketException, OSError):
            self.closed = True

    def type(self, text):
        self.send(STDIN, text.encode())

    def resize(self, width, height):
        """What kubectl sends when the terminal is (re)sized."""
        self.send(RESIZE, json.dumps({"Width": width, "Height": height}).encode())

    def output(self):
        return self.received.get(STDOUT, b"").decode(errors="replace")

    def status(self):
        """The status channel's v1.Status: {"status": "Success"}, or Failure
        with a reason (NonZeroExitCode: an ExitCode cause) and message."""
        return json.loads(self.received.get(STATUS) or b"{}")

    def read(self, until=None, timeout=TIMEOUT):
        """Keeps what arrives until until() holds, the server closes or
        timeout passed; returns whether until() holds."""
        done = until or (lambda: False)
        deadline = time.monotonic() + timeout
        while not self.closed and not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.ws.settimeout(remaining)
            try:
                frame = self.ws.recv()
            except websocket.WebSocketTimeoutException:
                break
            except (websocket.WebSocketException, OSError):
                self.closed = True
                break
            if not frame:
                self.closed = True
                break
            frame = frame if isinstance(frame, bytes) else frame.encode()
            # The server opens with an empty message on the first channel it writes.
            self.received[frame[0]] = self.received.get(frame[0], b"") + frame[1:]
        return done()


CONTROL = re.compile(r"(\r|\x1b\[[0-9;?]*[A-Za-z])")  # a carriage return, or a CSI escape sequence
SIZE = re.compile(r"\d+ \d+")  # what `stty size` prints: rows and columns


def screen(output):
    """The lines a terminal shows for output: a carriage return goes back to
    the line's start, ESC[J and ESC[K clear the rest of it, other escape
    sequences (ash's cursor position query ESC[6n) show nothing. So ash's
    redraws of a line it has echoed look as they do to a user."""
    lines = []
    for text in output.split("\n"):
        line, column = [], 0
        for piece in CONTROL.split(text):
            if piece == "\r":
                column = 0
            elif piece.startswith("\x1b["):
                if piece[-1] in "JK":
                    del line[column:]
            else:
                line[column:column + len(piece)] = piece
                column += len(piece)
        lines.append("".join(line))
    return lines


def at_prompt(stream):
    """The shell waits for a command: its prompt ends the screen. (ash sets
    the terminal up for its line editing before it prints the prompt, so
    what is typed now is neither echoed twice nor redrawn.)"""
    return screen(stream.output())[-1].endswith("# ")


def sizes(stream):
    return [line for line in screen(stream.output()) if SIZE.fullmatch(line)]


def ask_size(stream, want, tries=20):
    """Types `stty size` at the prompt until the terminal says it is `want`
    (a resize goes to the terminal beside stdin, not in order with it, so an
    answer may predate it), `tries` times at most; returns the last size
    printed, or None."""
    size = None
    for _ in range(tries):
        answers = len(sizes(stream))
        if not stream.read(until=lambda: at_prompt(stream), timeout=10):
            break
        stream.type("stty size\n")
        if not stream.read(until=lambda: len(sizes(stream)) > answers, timeout=10):
            break
        size = sizes(stream)[-1]
        if size == want:
            break
        time.sleep(0.05)
    return size


def exit_code(stream_status):
    """The exit code a status channel reports: 0 for Success, an ExitCode cause's, else None."""
    if stream_status.get("status") == "Success":
        return 0
    for cause in (stream_status.get("details") or {}).get("causes", []):
        if cause.get("reason") == "ExitCode":
            return int(cause["message"])
    return None


def terminal_session(side, key, url, exit_line, fresh_prompt):
    """kubectl -it on a shell: waits for its prompt (after typing a newline
    if fresh_prompt, for a shell that printed its first one before we came),
    makes the terminal 123 columns by 45 rows, asks the shell its size,
    types exit_line at the next prompt and reads until the server closes.
    The fact `key`: the size printed, whether the screen shows what was
    typed after the prompt (a terminal echoes it), the status channel's
    status, reason and exit code, and whether the server closed."""
    try:
        stream = Stream(url)
    except (websocket.WebSocketException, OSError) as e:
        side.facts[key] = {"connected": False}
        side.notes.append(f"{key}: connect: {e!r}")
        return
    try:
        if fresh_prompt:
            stream.type("\n")
        stream.read(until=lambda: at_prompt(stream), timeout=10)
        stream.resize(123, 45)
        size = ask_size(stream, "45 123")
        stream.read(until=lambda: at_prompt(stream), timeout=10)
        stream.type(exit_line)
        stream.read()
    finally:
        stream.close()
    answer = stream.status()
    side.facts[key] = {"size": size, "echoed": "/ # stty size" in screen(stream.output()),
                       "status": answer.get("status"), "reason": answer.get("reason"), "exit_code": exit_code(answer),
                       "closed by the server": stream.closed}
    side.notes.append(f"{key}: output {stream.output()!r}, stderr {stream.received.get(STDERR, b'')!r}, "
                      f"status {answer}")


def exec_scenario(side):
    with side.running_pod("tty-exec", [{"name": "shell", "command": ["sleep", "3600"]}]) as (the_pod, sandbox_id):
        container_id = side.start(the_pod, sandbox_id, "shell")
        # kubectl exec -it: a terminal has no stderr of its own.
        request = v1.ExecRequest(container_id=container_id, cmd=["/bin/sh"], tty=True, stdin=True, stdout=True,
                                 stderr=False)
        response = side.call("Exec", side.kubelet.runtime.Exec, request, timeout=30)
        terminal_session(side, "terminal", response.url, "exit 5\n", fresh_prompt=False)
        side.call("shell: status after exec", side.kubelet.container_status, container_id, reduce=status_fact)


def terminal_exec_sees_its_size_and_exit_code_as_with_runc(kubelet, leftovers):
    sides = differential(kubelet, leftovers, exec_scenario)
    check_runc(sides, {"Exec": OK, "shell: status after exec": status("RUNNING"),
                       "terminal": {"size": "45 123", "echoed": True, "status": "Failure",
                                    "reason": "NonZeroExitCode", "exit_code": 5, "closed by the server": True}})
    compare(sides)
    assert leftovers() == []


def attach_scenario(side):
    # kubectl run -it: the container's own shell on a terminal, stdin kept open.
    container = {"name": "shell", "command": ["/bin/sh"], "tty": True, "stdin": True}
    with side.running_pod("tty-attach", [container]) as (the_pod, sandbox_id):
        container_id = side.start(the_pod, sandbox_id, "shell")
        request = v1.AttachRequest(container_id=container_id, stdin=True, stdout=True, stderr=False, tty=True)
        response = side.call("Attach", side.kubelet.runtime.Attach, request, timeout=30)
        terminal_session(side, "terminal", response.url, "exit 0\n", fresh_prompt=True)
        side.wait("shell: status after exit", container_id, EXITED, required=False)


def terminal_attach_sees_its_size_and_the_container_exit_as_with_runc(kubelet, leftovers):
    sides = differential(kubelet, leftovers, attach_scenario)
    check_runc(sides, {"shell: CreateContainer": OK, "Attach": OK,
                       "shell: status after exit": status("EXITED", "Completed", 0)})
    terminal = sides["runc"].facts["terminal"]
    assert (terminal["size"], terminal["echoed"], terminal["closed by the server"]) == ("45 123", True, True), \
        terminal
    compare(sides)
    assert leftovers() == []


# ---- 7, 8: in-place update of resources -------------------------------------------

# The container's own cgroup limits, from inside it (cgroup v2 or v1).
READ_LIMITS = """
if [ -e /sys/fs/cgroup/cgroup.controllers ]; then
    echo "memory $(cat /sys/fs/cgroup/memory.max)"
    set -- $(cat /sys/fs/cgroup/cpu.max)
    echo "cpu_quota $1"; echo "cpu_period $2"
else
    echo "memory $(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)"
    echo "cpu_quota $(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us)"
    echo "cpu_period $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)"
fi
"""


def limits_fact(result):
    """ExecSync of READ_LIMITS: its exit code and {"memory": ..., "cpu_quota": ..., "cpu_period": ...}."""
    limits = dict(line.split(" ", 1) for line in result.stdout.decode().splitlines() if " " in line)
    return {"exit_code": result.exit_code, **limits}


def resources_fact(container_status):
    """What ContainerStatus.resources says (1.6.20, 1.7 and 2.1 fill it in), or "absent"."""
    if not container_status.HasField("resources") or not container_status.resources.HasField("linux"):
        return {"resources": "absent"}
    linux = container_status.resources.linux
    return {"memory_limit_in_bytes": linux.memory_limit_in_bytes, "cpu_quota": linux.cpu_quota,
            "cpu_period": linux.cpu_period, "cpu_shares": linux.cpu_shares}


def resized(the_pod, name, limits):
    """The LinuxContainerResources kubelet sends for an in-place resize of
    container `name` to limits (requests follow them): computed as for a
    new container with them, from the same pod with the new limits."""
    manifest = copy.deepcopy(the_pod.manifest)
    for container in manifest["spec"]["containers"]:
        if container["name"] == name:
            container["resources"] = {"limits": limits}
    new = Pod(manifest, uid=the_pod.uid)
    return new._linux_resources(new.containers[name])


def update_scenario(side):
    container = {"name": "idle", "command": ["sleep", "3600"],
                 "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}}}
    with side.running_pod("update", [container]) as (the_pod, sandbox_id):
        container_id = side.start(the_pod, sandbox_id, "idle")
        for phase in ("before", "after"):
            if phase == "after":
                request = v1.UpdateContainerResourcesRequest(
                    container_id=container_id, linux=resized(the_pod, "idle", {"memory": "128Mi", "cpu": "1"}))
                side.call("UpdateContainerResources", side.kubelet.runtime.UpdateContainerResources, request,
                          timeout=30, required=False)
            side.call(f"{phase}: cgroup limits", side.kubelet.exec_sync, container_id, ["sh", "-c", READ_LIMITS],
                      reduce=limits_fact, required=False)
            side.call(f"{phase}: ContainerStatus.resources", side.kubelet.container_status, container_id,
                      reduce=resources_fact, required=False)


def update_of_resources_reaches_the_containers_cgroup_as_with_runc(kubelet, leftovers):
    sides = differential(kubelet, leftovers, update_scenario)

    def limits(memory, cpu_quota):
        return {"ok": True, "exit_code": 0, "memory": str(memory), "cpu_quota": str(cpu_quota), "cpu_period": "100000"}

    def resources(memory, cpu_quota, cpu_shares):
        return {"ok": True, "memory_limit_in_bytes": memory, "cpu_quota": cpu_quota, "cpu_period": 100000,
                "cpu_shares": cpu_shares}

    check_runc(sides, {
        "UpdateContainerResources": OK,
        "before: cgroup limits": limits(64 << 20, 50000),
        "before: ContainerStatus.resources": resources(64 << 20, 50000, 512),
        "after: cgroup limits": limits(128 << 20, 100000),
        "after: ContainerStatus.resources": resources(128 << 20, 100000, 1024),
    })
    compare(sides)
    assert leftovers() == []


def host_cgroup_of(pid):
    """{"cpu_quota", "cpus", "memory"} of the process's cgroup as the host
    sees it (cgroup v2 or v1); "cpus" only where its cpuset is there."""
    with open(f"/proc/{pid}/cgroup") as f:
        lines = [line.rstrip("\n").split(":", 2) for line in f]
    read = lambda path: open(path).read().strip()  # noqa: E731
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        path = "/sys/fs/cgroup" + next(p for _, controllers, p in lines if controllers == "")
        facts = {"cpu_quota": read(f"{path}/cpu.max").split()[0], "memory": read(f"{path}/memory.max")}
        cpuset = f"{path}/cpuset.cpus"
    else:
        # The hierarchy of each controller, mounted as its controllers' names ("cpu,cpuacct" or "cpu").
        where = {c: f"/sys/fs/cgroup/{controllers}{p}" for _, controllers, p in lines for c in controllers.split(",")}
        facts = {"cpu_quota": read(f"{where['cpu']}/cpu.cfs_quota_us"),
                 "memory": read(f"{where['memory']}/memory.limit_in_bytes")}
        cpuset = f"{where['cpuset']}/cpuset.cpus"
    if os.path.exists(cpuset):
        facts["cpus"] = read(cpuset)
    return facts


def update_of_a_wasm_containers_cpu_applies_and_of_its_memory_is_refused(kubelet, leftovers):
    """Not differential: runc has no wasm containers. A resize of cpu and
    the CPU manager's cpuset reach the wasm container's cgroup (its memory
    limit, 100M, is no whole number of pages: the kernel's rounding is no
    change of memory); a wasm
    instance sized its memory cap when it started, so a resize of memory
    is refused, saying so, and the container runs on, unchanged."""
    the_pod = pod("wasmlet", "wasm-update", [{"name": "sleep", "image": WASM_SLEEP,
                                              "resources": {"limits": {"memory": "100M", "cpu": "250m"}}}],
                  sidecar=False)
    with kubelet.running_pod(the_pod) as sandbox_id:
        container_id = kubelet.create_container(the_pod, sandbox_id, "sleep")
        kubelet.start_container(container_id)
        kubelet.wait_container(container_id, RUNNING, timeout=TIMEOUT)
        pid = kubelet.container_info(container_id)["pid"]
        assert host_cgroup_of(pid)["cpu_quota"] == "25000", host_cgroup_of(pid)

        # In-place resize of cpu: 250m to 500m.
        kubelet.runtime.UpdateContainerResources(v1.UpdateContainerResourcesRequest(
            container_id=container_id, linux=resized(the_pod, "sleep", {"memory": "100M", "cpu": "500m"})), timeout=30)
        assert host_cgroup_of(pid)["cpu_quota"] == "50000", host_cgroup_of(pid)
        assert resources_fact(kubelet.container_status(container_id))["cpu_quota"] == 50000
        # The CPU manager narrows a shared-pool container to the CPUs left: only cpuset_cpus.
        kubelet.runtime.UpdateContainerResources(v1.UpdateContainerResourcesRequest(
            container_id=container_id, linux=v1.LinuxContainerResources(cpuset_cpus="0")), timeout=30)
        assert host_cgroup_of(pid).get("cpus", "0") == "0", host_cgroup_of(pid)

        # Memory: refused, and nothing changes.
        request = v1.UpdateContainerResourcesRequest(
            container_id=container_id, linux=resized(the_pod, "sleep", {"memory": "128Mi", "cpu": "500m"}))
        try:
            kubelet.runtime.UpdateContainerResources(request, timeout=30)
            outcome = "done"
        except grpc.RpcError as e:
            outcome = e.details() or ""
        assert "memory limit is not supported for wasm containers" in outcome and "memory cap" in outcome, outcome
        assert kubelet.container_status(container_id).state == RUNNING
        assert resources_fact(kubelet.container_status(container_id)).get("memory_limit_in_bytes") == 100_000_000
        # The kernel keeps the limit in whole pages (100M is not a whole number of them).
        page = os.sysconf("SC_PAGE_SIZE")
        assert host_cgroup_of(pid)["memory"] == str(100_000_000 // page * page), host_cgroup_of(pid)
    assert leftovers() == []


# What the VM lane runs too (cgroup v2, both drivers); terminals do not
# depend on the node's cgroups and need the websocket module.
NODE_CHECKS = [
    oom_kill_of_the_init_process_gives_the_same_reason_and_exit_code,
    oom_kill_of_a_child_process_gives_the_same_reason_and_exit_code,
    stats_of_a_created_then_running_container_have_the_same_fields,
    stop_of_exited_term_ignoring_and_term_handling_containers_gives_the_same_statuses,
    update_of_resources_reaches_the_containers_cgroup_as_with_runc,
    update_of_a_wasm_containers_cpu_applies_and_of_its_memory_is_refused,
]
CHECKS = NODE_CHECKS + [
    terminal_exec_sees_its_size_and_exit_code_as_with_runc,
    terminal_attach_sees_its_size_and_the_container_exit_as_with_runc,
]
