"""A lock's cached files as OCI artifacts, through the registries people already run (and OCI image
layout folders, for air gaps).

- `reference.parse_reference`: `oci://REGISTRY[:PORT]/REPO[:TAG|@DIGEST]`, `oci:DIR[:TAG]`.
- `credentials.find_login`: registry logins from REGISTRY_AUTH_FILE, podman's and docker's files and
  credential helpers, in skopeo's order.
- `registry.Registry`: the distribution spec's requests (auth challenge, HEAD, mount, resumable
  chunked uploads, manifests).
- `modelpack.modelpack`: one CNCF ModelPack artifact per locked entry and an index of them;
  `volume.volume_image`: the image-volume profile (tars that unpack to a read-only HF cache).
- `push.push`: either, to a registry or a layout; `pull.resolve_pull`: where a lock's files are in one.
"""
