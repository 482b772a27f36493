#!/usr/bin/env bash
# Builds a `busybox:latest` container image from Debian's busybox-static, without Docker.
#
#   scripts/build-busybox-image.sh OUT.tar          # `docker save` format (default)
#   scripts/build-busybox-image.sh OUT.tar --oci    # OCI image-layout tar
#
# The root filesystem holds /bin/busybox with a symlink per applet (`busybox --list`),
# /etc/passwd and /etc/group (root, nobody), /tmp (1777); the config runs `sh` with a PATH.
# The output is deterministic: fixed mtimes and owners, sorted entries, `gzip -n`, so the same
# busybox gives the same digests. OUT.tar is replaced atomically.
# Needs only bash, coreutils, tar, gzip, sha256sum and python3.
set -euo pipefail

usage() { echo "usage: $0 OUT.tar [--oci]" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
out=$1
format=docker
if [ $# -eq 2 ]; then
  [ "$2" = "--oci" ] || usage
  format=oci
fi
case "$out" in -*) usage ;; esac

busybox=/bin/busybox
if ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed'; then
  echo "installing busybox-static" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y busybox-static >&2
fi
"$busybox" --list >/dev/null 2>&1 || { echo "error: $busybox does not run" >&2; exit 1; }

# Fixed timestamp for every file and for the config's "created".
epoch=0
created=1970-01-01T00:00:00Z
tarflags=(--sort=name --mtime=@$epoch --owner=0 --group=0 --numeric-owner --format=gnu)

work=$(mktemp -d "${TMPDIR:-/tmp}/busybox-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
umask 022

# Root filesystem.
root=$work/rootfs
mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/root"
cp "$busybox" "$root/bin/busybox"
chmod 0755 "$root/bin/busybox"
for applet in $("$busybox" --list | LC_ALL=C sort -u); do
  case "$applet" in busybox|*/*|'') continue ;; esac
  ln -s busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
chmod 0644 "$root/etc/passwd" "$root/etc/group"
chmod 0755 "$root" "$root/bin" "$root/etc"
chmod 0700 "$root/root"
chmod 1777 "$root/tmp"

layer=$work/layer.tar
(cd "$root" && tar "${tarflags[@]}" -cf "$layer" .)
diff_id=$(sha256sum "$layer" | cut -d' ' -f1)

# Image config: `docker save` and OCI use the same document.
config=$work/config.json
python3 - "$config" "$diff_id" "$created" <<'PY'
import json, sys
path, diff_id, created = sys.argv[1:4]
config = {
    "architecture": "amd64",
    "os": "linux",
    "created": created,
    "config": {
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "Cmd": ["sh"],
    },
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + diff_id]},
    "history": [{"created": created, "created_by": "scripts/build-busybox-image.sh"}],
}
with open(path, "w") as f:
    json.dump(config, f, sort_keys=True, separators=(",", ":"))
PY
config_digest=$(sha256sum "$config" | cut -d' ' -f1)

image=$work/image
mkdir -p "$image"
if [ "$format" = docker ]; then
  mkdir -p "$image/$diff_id"
  cp "$layer" "$image/$diff_id/layer.tar"
  printf '1.0' >"$image/$diff_id/VERSION"
  cp "$config" "$image/$config_digest.json"
  python3 - "$image" "$config_digest" "$diff_id" <<'PY'
import json, sys
image, config_digest, diff_id = sys.argv[1:4]
manifest = [{
    "Config": config_digest + ".json",
    "RepoTags": ["busybox:latest"],
    "Layers": [diff_id + "/layer.tar"],
}]
with open(image + "/manifest.json", "w") as f:
    json.dump(manifest, f, separators=(",", ":"))
with open(image + "/repositories", "w") as f:
    json.dump({"busybox": {"latest": diff_id}}, f, separators=(",", ":"))
PY
else
  blobs=$image/blobs/sha256
  mkdir -p "$blobs"
  gzip -n -9 -c "$layer" >"$work/layer.tar.gz"
  layer_digest=$(sha256sum "$work/layer.tar.gz" | cut -d' ' -f1)
  mv "$work/layer.tar.gz" "$blobs/$layer_digest"
  cp "$config" "$blobs/$config_digest"
  python3 - "$image" "$config_digest" "$layer_digest" <<'PY'
import hashlib, json, os, sys
image, config_digest, layer_digest = sys.argv[1:4]
blobs = os.path.join(image, "blobs", "sha256")
size = lambda d: os.path.getsize(os.path.join(blobs, d))
manifest = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {
        "mediaType": "application/vnd.oci.image.config.v1+json",
        "digest": "sha256:" + config_digest,
        "size": size(config_digest),
    },
    "layers": [{
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "digest": "sha256:" + layer_digest,
        "size": size(layer_digest),
    }],
}
data = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
manifest_digest = hashlib.sha256(data).hexdigest()
with open(os.path.join(blobs, manifest_digest), "wb") as f:
    f.write(data)
index = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.index.v1+json",
    "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": "sha256:" + manifest_digest,
        "size": len(data),
        "annotations": {"org.opencontainers.image.ref.name": "busybox:latest"},
        "platform": {"architecture": "amd64", "os": "linux"},
    }],
}
with open(os.path.join(image, "index.json"), "w") as f:
    json.dump(index, f, sort_keys=True, separators=(",", ":"))
with open(os.path.join(image, "oci-layout"), "w") as f:
    json.dump({"imageLayoutVersion": "1.0.0"}, f)
PY
fi

find "$image" -type f -exec chmod 0644 {} +
find "$image" -type d -exec chmod 0755 {} +
mkdir -p "$(dirname "$out")"
out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
tmp_out=$(mktemp "$(dirname "$out")/.$(basename "$out").XXXXXX")
(cd "$image" && tar "${tarflags[@]}" -cf "$tmp_out" .) || { rm -f "$tmp_out"; exit 1; }
chmod 0644 "$tmp_out"
mv -f "$tmp_out" "$out"
echo "$out: busybox:latest ($format) id sha256:$config_digest" >&2
