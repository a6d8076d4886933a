#!/bin/sh
# Inside the VM node (run by wasmlet-vm-lane.service): the lane's scenarios
# from the host's share at /mnt/host, their results back into it.
share=/mnt/host
mkdir -p "$share/results"
export PYTHONPATH="$share/lane:$share/lane/cri"
export WASMLET_CRI_STUBS="$share/stubs"
export PYTHONDONTWRITEBYTECODE=1
python3 "$share/lane/guest_lane.py" "$share" >"$share/results/lane.log" 2>&1
echo "exit $?" >>"$share/results/lane.log"
sync
