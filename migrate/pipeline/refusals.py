"""What a destination's refusal means, read from what its kubelet reports.

The restored pod's containers say why they do not run in their waiting
state (reason and message, as the kubelet took them from the runtime). Two
families need an operator, not patience:

- the runtime would not restore. Whatever the words, a checkpoint image
  created as an ordinary container means restore is off: CRI-O with
  `container_level_enabled` other than checkpoint_restore skips its
  checkpoint detection, and the image (no Entrypoint, the archive as its
  root) fails with "no command specified", or with runc not finding the
  pod's command in it; containerd 2.2.7+/2.3.4+ say "checkpoint restore via
  CreateContainer is disabled by configuration", 2.4 starts it as an
  ordinary image. The hint names the setting and the file.
- the node cannot pull the checkpoint image for a reason a retry cannot
  fix: a registry answering plain HTTP to the node's HTTPS, a certificate
  the node does not trust, credentials missing, wrong or not allowed, an
  image the registry does not have, an encrypted image (`--encrypt-for`) the
  node holds no private key for, or one a pod names by digest (CRI-O decrypts
  only what it may store under another digest). The kubelet retries these for ever
  (ImagePullBackOff); the first ErrImagePull that says so is enough.
  Connection errors, timeouts, 5xx and 429 are not among them: those are
  waited out until the deadline, as a registry can come back.
"""

from __future__ import annotations

import re

from migrate.adapters.kubelet import CRIU_FAILED
from migrate.errors import ClusterError, RegistryError, Transient
from migrate.pipeline.nodes import Runtime, crio_restore_fix

#: Waiting reasons that will not resolve by themselves (the kubelet retries, in vain).
FATAL_WAITING = frozenset({"CreateContainerError", "CreateContainerConfigError",
                           "InvalidImageName", "ErrImageNeverPull", "RunContainerError",
                           "SignatureValidationFailed"})
#: A failed pull the kubelet will try again: its message tells whether that can help.
#: The kubelet (pkg/kubelet/images/image_manager.go evalCRIPullErr, v1.37) reports a
#: runtime's RegistryUnavailable (CRI-O: the registry did not answer) as that reason,
#: any other failure as ErrImagePull, then ImagePullBackOff until the next try.
PULLING = frozenset({"ErrImagePull", "ImagePullBackOff", "RegistryUnavailable"})
#: Every waiting reason of a failed image pull.
PULL_FAILED = PULLING | {"InvalidImageName", "ErrImageNeverPull", "SignatureValidationFailed"}

#: A checkpoint image started as an ordinary image, or a runtime saying restore is off.
_RESTORE_OFF = re.compile(
    r"no command specified"
    r"|restore via CreateContainer is disabled"
    r"|checkpoint restore is not enabled"
    r"|checkpoint/restore support not available"
    r'|exec: "[^"]*": (?:executable file not found in \$PATH|stat [^:]*: no such file)')

#: (pattern, what it is, what to do) for pull failures no retry fixes; first match wins.
_PULL_CAUSES: tuple[tuple[re.Pattern[str], str, str], ...] = (
    # containers/image refuses to decrypt what a digest names (the manifest would change),
    # before it looks for a key (copy/encryption.go, go.podman.io/image v5.38.0).
    (re.compile(r"should be decrypted, but we can.t modify the manifest"),
     "the node cannot decrypt an image named by its digest",
     "name the encrypted checkpoint image by its tag (IMAGE:TAG, not IMAGE@DIGEST), as "
     "migrate pod and doctor --probe do: decrypting rewrites its manifest"),
    # containers/image's words (ocicrypt): no key at all, or none that opens the layer.
    (re.compile(r"decrypting layer|private key needed for decryption|no suitable key "
                r"unwrapper"),
     "the node has no private key for the encrypted image",
     "put the private key of one --encrypt-for recipient in CRI-O's decryption_keys_path on "
     "{node} (crio.conf [crio.runtime], default /etc/crio/keys; containerd: "
     "/etc/containerd/ocicrypt/keys), or encrypt for {node}'s public key"),
    (re.compile(r"server gave HTTP response to HTTPS client"),
     "the registry answers plain HTTP and the node speaks HTTPS",
     "list it as insecure in the nodes' /etc/containers/registries.conf ([[registry]] "
     'location = "{registry}", insecure = true; containerd: a hosts.toml in '
     "/etc/containerd/certs.d/{registry}/), or serve it over TLS"),
    (re.compile(r"x509|certificate"),
     "the node does not trust the registry's certificate",
     "put the registry's CA in /etc/containers/certs.d/{registry}/ca.crt on each node "
     "(containerd: /etc/containerd/certs.d/{registry}/), or use a certificate the nodes trust"),
    (re.compile(r"\b403\b|denied|forbidden", re.IGNORECASE),
     "the registry refused the node's credentials access to the image",
     "the credentials migrate pushed with (--creds, --authfile) go to the restored pod as an "
     "imagePullSecret: give ones that may also pull from {registry}"),
    (re.compile(r"\b401\b|unauthorized|authentication required|invalid username/password",
                re.IGNORECASE),
     "the node has no valid credentials for the registry",
     "give migrate credentials that can pull from {registry} (--creds or --authfile): it puts "
     "them on the restored pod as an imagePullSecret; the node's own (its kubelet credential "
     "provider, global pull secret) are not enough here"),
    (re.compile(r"manifest unknown|name unknown|not found|\b404\b", re.IGNORECASE),
     "the registry does not have the image the node asked for",
     "check that the nodes reach the same registry as migrate at {registry} (a mirror in the "
     "nodes' registries.conf, another address, a cleanup of the repository)"),
)


#: How a restore hint ends: the way to prove the fix (a probe's own row leaves it out).
PROBE_SUGGESTION = "; `migrate doctor --probe {node}` proves it"


class RestoreRefused(ClusterError):
    """The destination's kubelet or runtime refused the restore.

    ``runtime_message``: the kubelet's reason and message, as the runtime worded it.
    """

    runtime_message = ""


class PullRefused(RegistryError):
    """The destination cannot pull the checkpoint image, and retrying will not change that."""

    runtime_message = ""


class PullFailedForNow(Transient, PullRefused):
    """The destination could not pull the workload's image for no known lasting cause
    (the registry unreachable, a 5xx): the pre-pull stops the run at once, before any
    checkpoint, and a drain tries the pod again later (its --attempts)."""


def restore_off(message: str) -> bool:
    """Whether a container's creation failed because its runtime does not restore."""
    return bool(_RESTORE_OFF.search(message))


def refused(container: str, node: str, reason: str, message: str,
            runtime: Runtime | None, *, emptied: tuple[str, ...] = ()) -> RestoreRefused:
    """The error for a fatal waiting reason, with a hint for its cause; ``emptied``: the
    emptyDir volumes the restored pod got empty (a file held open there is the likely
    cause of a CRIU failure)."""
    text = f"the restore of {container} on {node} failed: {reason}: {message}".rstrip(": ")
    if restore_off(message):
        known = runtime is not None and bool(runtime.name)
        who = f"{runtime.shown} on {node}" if runtime and known else f"the runtime on {node}"
        how = (": it started the checkpoint image as an ordinary image"
               if "no command" in message or "exec:" in message else "")
        fix = runtime.restore_fix if runtime and known else crio_restore_fix()
        error = RestoreRefused(f"{text} ({who} does not restore checkpoints{how})",
                               hint=fix + PROBE_SUGGESTION.format(node=node))
    elif criu := CRIU_FAILED.search(message):
        error = RestoreRefused(f"the restore of {container} on {node} failed: CRIU could not "
                               f"restore it ({criu['why'].strip()}); its log on {node}: "
                               f"{criu['log']}", hint=(EMPTIED_HINT.format(
                                   ", ".join(emptied), node) if emptied else "")
                               + CRIU_RESTORE_HINT)
    else:
        error = RestoreRefused(text, hint=_hint(message))
    error.runtime_message = f"{reason}: {message}".rstrip(": ")
    return error


CRIU_RESTORE_HINT = (
    "CRIU's log on the destination says why (the lines with Error). Two causes it often "
    "names: a file the process holds open that the checkpoint did not carry (`File ... has "
    "bad size`: CRI-O carries a file the container changed in its image's layers only where "
    "the node itself has a file at that path, so keep such files on a volume both nodes "
    "reach), and a TCP connection (put `tcp-close` in /etc/criu/runc.conf on both nodes)")
#: Put first when the restored pod got emptyDirs empty: CRIU then cannot open a file the
#: process held open there again (`Can't open file data/counter.log on restore: No such
#: file or directory`, CRI-O v1.36.3 with CRIU 4.1.1 on a real node).
EMPTIED_HINT = ("the emptyDir volume(s) {} started empty on {}: a file the process held "
                "open there cannot be opened again (`Can't open file ... on restore`); such "
                "a pod can move only once it holds none open there. ")


def _hint(message: str) -> str:
    if "expects following bind mounts" in message:
        return ("the restored pod must mount every volume the checkpointed container had; "
                "keep the source's volumes and volumeMounts")
    if 'failed to read "status.dump"' in message:
        return ("containerd restores only archives in its own layout (status.dump): restore "
                "a CRI-O checkpoint on a CRI-O node")
    if "failed to pull checkpoint base image" in message:
        return ("containerd pulls the checkpoint's base image without the pod's pull secrets "
                "(containerd #12585): make it pullable by the node as it is, or pre-pull it")
    if "image not known" in message:
        # CRI-O creates the restored container on the image config.dump names, by its
        # storage ID, and pulls nothing for it (server/container_restore.go, v1.36.3).
        return ("CRI-O restores onto the image the container ran (the checkpoint's "
                "rootfsImageName) and does not pull it: pull that image on the destination "
                "first (any pod of it there, or a pre-pull DaemonSet), then migrate again")
    return "kubectl describe pod shows the kubelet's events"


#: CRI-O (1.36 at least) tries a failed image pull again as an OCI artifact and names both
#: failures, the second mostly repeating the first (internal/storage/image.go).
_ARTIFACT_RETRY = re.compile(r"unable to pull image or OCI artifact: pull image err: (.*?)"
                             r"; artifact err: .*", re.DOTALL)


#: CRI-O >= 1.36's words for a failure it did not try again as an artifact (a network
#: error): the same cause, without the retry.
_NOT_RETRIED = "unable to pull image: "


def image_pull_error(message: str) -> str:
    """The image pull's own error out of CRI-O's message that adds its artifact retry's
    (a checkpoint image is an image: the artifact attempt says nothing new), or that
    says it did not retry; the same cause either way."""
    found = _ARTIFACT_RETRY.search(message)
    if found is not None:
        return message[:found.start()] + found.group(1)
    return message.replace(_NOT_RETRIED, "", 1)


def _known_cause(message: str, image: str, node: str) -> tuple[str, str] | None:
    """(what went wrong, the hint) when a pull's message matches a known cause."""
    registry = image.split("/", 1)[0]
    for pattern, what, todo in _PULL_CAUSES:
        if pattern.search(message):
            return what, todo.format(registry=registry, node=node)
    return None


def base_pull_refused(node: str, image: str, message: str) -> PullRefused:
    """The error when the destination cannot pull the workload's own image (the one a
    CRI-O restore needs there): the cause's hint when it is known, else where to look."""
    cause, said = _known_cause(message, image, node), image_pull_error(message)
    if cause is not None:
        error = PullRefused(f"{node} cannot pull {image}, the image the restore runs on: "
                            f"{cause[0]}: {said}", hint=cause[1])
    else:
        registry = image.split("/", 1)[0]
        error = PullFailedForNow(
            f"{node} cannot pull {image}, the image the restore runs on: {said}",
            hint=f"the pod's imagePullSecrets must reach {registry}, and the nodes' "
            f"/etc/containers/registries.conf must let {node} pull from it (mirrors, "
            "insecure registries)")
    error.runtime_message = f"ErrImagePull: {message}"
    return error


def pull_refused(container: str, node: str, image: str, message: str) -> PullRefused | None:
    """The error for a pull failure no retry fixes, or None (a transient one: wait)."""
    cause = _known_cause(message, image, node)
    if cause is None:
        return None
    error = PullRefused(f"{node} cannot pull the checkpoint image of {container}: "
                        f"{cause[0]}: {image_pull_error(message)}", hint=cause[1])
    error.runtime_message = f"ErrImagePull: {message}"
    return error
