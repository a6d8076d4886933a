"""A tiny client of containerd's gRPC API, for what `ctr` cannot do.

ctr always starts the task it creates; these tests need a task that is
created and not started, so they call the Tasks service themselves.

    api = Client(ctd.socket, ctd.namespace)
    mounts = api.rootfs_mounts(ctd.snapshotter, "c1")
    pid = api.create_task("c1", mounts)
    api.delete_task("c1")
    api.close()

Failed calls raise grpc.RpcError; .details() holds containerd's message.
Needs grpcio, protobuf 3 and the `containerd` stubs (tests/deps.sh).
"""

import json

import grpc
from google.protobuf import any_pb2

from containerd.services.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc
from containerd.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from containerd.types.task import task_pb2

# How containerd types an OCI process spec packed in an Any.
PROCESS_SPEC_TYPE = "types.containerd.io/opencontainers/runtime-spec/1/Process"
# Status values of containerd.v1.types.Process, by name.
STATUS_NAMES = {number: name for name, number in task_pb2.Status.items()}


class Client:
    """Tasks and Snapshots services of one containerd, in one namespace."""

    def __init__(self, socket, namespace, timeout=30):
        self.channel = grpc.insecure_channel(f"unix://{socket}")
        # containerd takes the namespace from this header on every call.
        self.metadata = [("containerd-namespace", namespace)]
        self.timeout = timeout
        self.tasks = tasks_pb2_grpc.TasksStub(self.channel)
        self.snapshots = snapshots_pb2_grpc.SnapshotsStub(self.channel)

    def close(self):
        self.channel.close()

    def _call(self, method, request, timeout=None):
        return method(request, metadata=self.metadata, timeout=timeout or self.timeout)

    def rootfs_mounts(self, snapshotter, container_id):
        """Mounts of the container's rootfs snapshot.

        `ctr containers create` prepares that snapshot with the container id
        as its key.
        """
        request = snapshots_pb2.MountsRequest(snapshotter=snapshotter, key=container_id)
        return list(self._call(self.snapshots.Mounts, request).mounts)

    def create_task(self, container_id, rootfs):
        """Tasks.Create without stdio; returns the pid the shim reports."""
        request = tasks_pb2.CreateTaskRequest(container_id=container_id, rootfs=rootfs)
        return self._call(self.tasks.Create, request).pid

    def start_task(self, container_id):
        """Tasks.Start; returns the pid."""
        request = tasks_pb2.StartRequest(container_id=container_id)
        return self._call(self.tasks.Start, request).pid

    def state(self, container_id):
        """Tasks.Get; returns the process (.pid, .exit_status, .exited_at)
        and its status name, like CREATED or STOPPED."""
        request = tasks_pb2.GetRequest(container_id=container_id)
        process = self._call(self.tasks.Get, request).process
        return process, STATUS_NAMES.get(process.status, str(process.status))

    def kill(self, container_id, signal):
        request = tasks_pb2.KillRequest(container_id=container_id, signal=signal)
        self._call(self.tasks.Kill, request)

    def wait(self, container_id, timeout=30):
        """Tasks.Wait; returns (.exit_status, .exited_at) once the task exits."""
        request = tasks_pb2.WaitRequest(container_id=container_id)
        return self._call(self.tasks.Wait, request, timeout=timeout)

    def delete_task(self, container_id):
        """Tasks.Delete; returns (.pid, .exit_status, .exited_at)."""
        request = tasks_pb2.DeleteTaskRequest(container_id=container_id)
        return self._call(self.tasks.Delete, request)

    def exec(self, container_id, exec_id, process_spec):
        """Tasks.Exec of process_spec (a dict, OCI process JSON), no stdio."""
        spec = any_pb2.Any(type_url=PROCESS_SPEC_TYPE,
                           value=json.dumps(process_spec).encode())
        request = tasks_pb2.ExecProcessRequest(container_id=container_id, exec_id=exec_id,
                                               spec=spec)
        self._call(self.tasks.Exec, request)

    def pause(self, container_id):
        self._call(self.tasks.Pause, tasks_pb2.PauseTaskRequest(container_id=container_id))

    def resize_pty(self, container_id, width, height):
        request = tasks_pb2.ResizePtyRequest(container_id=container_id, width=width,
                                             height=height)
        self._call(self.tasks.ResizePty, request)
