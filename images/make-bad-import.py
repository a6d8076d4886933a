#!/usr/bin/env python3
"""Write a tiny valid wasm module that cannot be instantiated.

It exports `_start`, which calls an imported `env.missing_function`
(no params, no results) that no runtime provides, so instantiation must
fail with a clear "unknown import" style error.

Usage: make-bad-import.py OUT.wasm
"""

import sys

FUNC_TYPE_VOID = bytes([0x60, 0x00, 0x00])  # func type: no params, no results
KIND_FUNC = 0x00


def vec(items):
    """A wasm vector: element count then the elements (counts stay < 128)."""
    assert len(items) < 128
    return bytes([len(items)]) + b"".join(items)


def name(text):
    """A wasm name: byte length then UTF-8 bytes."""
    data = text.encode()
    assert len(data) < 128
    return bytes([len(data)]) + data


def section(section_id, payload):
    assert len(payload) < 128  # one-byte LEB128 size is enough here
    return bytes([section_id, len(payload)]) + payload


def module():
    call_import = bytes([0x00, 0x10, 0x00, 0x0B])  # no locals; call 0; end
    return b"".join([
        b"\0asm", bytes([1, 0, 0, 0]),
        section(1, vec([FUNC_TYPE_VOID])),
        section(2, vec([name("env") + name("missing_function") + bytes([KIND_FUNC, 0])])),
        section(3, vec([bytes([0])])),  # function 1 has type 0
        section(7, vec([name("_start") + bytes([KIND_FUNC, 1])])),
        section(10, vec([bytes([len(call_import)]) + call_import])),
    ])


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    with open(sys.argv[1], "wb") as f:
        f.write(module())
