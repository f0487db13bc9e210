#!/usr/bin/env python3
"""Writes an OCI image layout holding the filter in Istio's Wasm "compat" variant.

One tar+gzip layer containing `plugin.wasm`, an OCI image config, and the manifest annotation
`module.wasm.image/variant: compat` (the layout Istio's WasmPlugin `oci://` fetcher reads).
The output is reproducible: same .wasm in, same digests out (fixed mtimes, owners, gzip header).

Push it with:  skopeo copy oci:build/oci:<tag> docker://<registry>/<name>:<tag>
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"


def blob(out, data):
    digest = hashlib.sha256(data).hexdigest()
    path = os.path.join(out, "blobs", "sha256", digest)
    with open(path, "wb") as f:
        f.write(data)
    return {"digest": "sha256:" + digest, "size": len(data)}


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wasm", required=True, help="the filter .wasm")
    ap.add_argument("--out", required=True, help="output folder (replaced)")
    ap.add_argument("--tag", required=True, help="image tag recorded in index.json")
    args = ap.parse_args()

    with open(args.wasm, "rb") as f:
        wasm = f.read()
    if wasm[:4] != b"\0asm":
        sys.exit(f"error: {args.wasm} is not a WebAssembly module")

    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("plugin.wasm")
        info.size, info.mode, info.mtime, info.uid, info.gid = len(wasm), 0o644, 0, 0, 0
        tar.addfile(info, io.BytesIO(wasm))
    tar_data = tar_bytes.getvalue()
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0, filename="") as g:
        g.write(tar_data)
    layer_data = gz.getvalue()

    shutil.rmtree(args.out, ignore_errors=True)
    os.makedirs(os.path.join(args.out, "blobs", "sha256"))

    layer = blob(args.out, layer_data) | {"mediaType": LAYER_MEDIA_TYPE}
    config = {
        "architecture": "wasm",
        "os": "wasip1",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar_data).hexdigest()]},
    }
    config_desc = blob(args.out, canonical(config)) | {"mediaType": CONFIG_MEDIA_TYPE}
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": config_desc,
        "layers": [layer],
        "annotations": {"module.wasm.image/variant": "compat"},
    }
    manifest_desc = blob(args.out, canonical(manifest)) | {
        "mediaType": MANIFEST_MEDIA_TYPE,
        "annotations": {"org.opencontainers.image.ref.name": args.tag},
    }
    with open(os.path.join(args.out, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(os.path.join(args.out, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                   "manifests": [manifest_desc]}, f, indent=2)
    print(f"oci: {args.out} tag {args.tag} manifest {manifest_desc['digest']} "
          f"plugin.wasm sha256:{hashlib.sha256(wasm).hexdigest()}")


if __name__ == "__main__":
    main()
