#!/usr/bin/env python3
"""Keeps only the exports the filter uses; the host then never calls the others.

The proxy-wasm Rust SDK exports every callback of the ABI (`proxy_on_log`,
`proxy_on_response_body`, the gRPC and TCP ones, ...). Envoy calls an exported callback for every
event of every stream, and a call from the host into V8 is the dearest thing a request does here:
`make bench --paired` measured `proxy_on_log` and `proxy_on_response_body` (the two a plain GET
gets) at ~0.5 us of Envoy CPU per request together, for callbacks the SDK answers with its
defaults. A callback that is not exported is skipped by the host (proxy-wasm-cpp-host checks
each one before calling it), so this keeps the callbacks the filter implements in either mode
(client: request headers; server: request and response headers; the root's configure and tick;
the context lifecycle) and drops the rest. `wasm-opt` then removes the code only they reached.

A filter change that implements another callback (say `on_http_call_response`) must add it to
KEEP, or the host will never call it: the end-to-end tests are what would show it missing.

Usage: prune_exports.py IN.wasm OUT.wasm
"""
import sys

# The exports the filter needs, in either mode. A missing one is an error: the module would load
# and then silently not do its work.
KEEP = {
    "memory",
    "_initialize",
    "proxy_abi_version_0_2_1",
    "proxy_on_memory_allocate",
    "proxy_on_vm_start",
    "proxy_on_configure",
    "proxy_on_tick",
    "proxy_on_context_create",
    "proxy_on_request_headers",
    "proxy_on_response_headers",
    "proxy_on_done",
    "proxy_on_delete",
}

EXPORT_SECTION = 7


def uleb(data, i):
    """Decodes an unsigned LEB128 at `i`; returns (value, next index)."""
    value = shift = 0
    while True:
        if i >= len(data):
            raise ValueError("truncated LEB128")
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def encode_uleb(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def prune_export_section(body):
    """Returns (new section body, kept names, dropped names)."""
    count, i = uleb(body, 0)
    kept, dropped, entries = [], [], []
    for _ in range(count):
        start = i
        length, i = uleb(body, i)
        name = body[i : i + length].decode("utf-8")
        i += length
        i += 1  # export kind
        _, i = uleb(body, i)  # index
        if name in KEEP:
            kept.append(name)
            entries.append(body[start:i])
        else:
            dropped.append(name)
    if i != len(body):
        raise ValueError("export section has trailing bytes")
    return encode_uleb(len(entries)) + b"".join(entries), kept, dropped


def prune(data):
    if data[:4] != b"\0asm":
        raise ValueError("not a WebAssembly module")
    out = bytearray(data[:8])
    i = 8
    kept = dropped = None
    while i < len(data):
        section_id = data[i]
        size, j = uleb(data, i + 1)
        body = data[j : j + size]
        if len(body) != size:
            raise ValueError("truncated section")
        i = j + size
        if section_id == EXPORT_SECTION:
            body, kept, dropped = prune_export_section(body)
        out += bytes([section_id]) + encode_uleb(len(body)) + body
    if kept is None:
        raise ValueError("the module has no export section")
    missing = KEEP - set(kept)
    if missing:
        raise ValueError("the module does not export " + ", ".join(sorted(missing)))
    return bytes(out), dropped


def main():
    if len(sys.argv) != 3 or sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if len(sys.argv) == 2 else 2
    with open(sys.argv[1], "rb") as f:
        data = f.read()
    try:
        pruned, dropped = prune(data)
    except ValueError as e:
        print(f"prune_exports: {sys.argv[1]}: {e}", file=sys.stderr)
        return 1
    with open(sys.argv[2], "wb") as f:
        f.write(pruned)
    print(f"prune_exports: {len(dropped)} callbacks the filter does not use are not exported")
    return 0


if __name__ == "__main__":
    sys.exit(main())
