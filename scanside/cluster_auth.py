"""Joining a running Ray cluster whatever its authentication (scanside.cluster's driver side).

Ray 2.5x has token authentication, and three of its behaviours met users of ``--ray ADDRESS``
(reproduced with Ray 2.60 and real ``ray start --head`` clusters): see ``connect``. This module
leans on two of Ray's private names (``ray._raylet``, ``ray._private.services``); where they
are missing (another Ray), it steps aside and ``ray.init`` runs as it would.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

from scanside.errors import InputError

log = logging.getLogger(__name__)


def connect(ray: Any, address: Optional[str], **init: Any) -> None:
    """``ray.init``: a new local cluster (``address`` None) or a running one.

    Ray (2.5x) has token authentication: a local cluster turns it on and writes a token to
    ~/.ray/auth_token where there is none, and so does a plain ``ray start --head`` run where
    that file exists; a driver joining an explicit address leaves it off, so such a cluster
    refused ``--ray HEAD:6379`` (InvalidAuthToken, after 20 s, as a bare ConnectionError). And
    a driver with it on (``auto`` where a token file exists) serves no worker of a cluster
    without it. So the driver asks the cluster first, once (an answer takes milliseconds),
    and matches it: authentication off for a cluster without it, on with this machine's token
    for one with it. RAY_AUTH_MODE=token or disabled, where the user sets it, is kept (another
    value counts as unset). The mode chosen stays in this process's environment: Ray reads it
    there for as long as the process is connected. A token the cluster refuses, none here, or
    no cluster answering is an InputError that says why and the fix."""
    if address is None:
        ray.init(**init)
        return
    name = f"address {address}"  # the CLI says --ray
    if not address.startswith("ray://"):  # Ray Client: its own server authenticates
        gcs = cluster_address(address)
        if gcs is not None:
            authenticate(gcs, name)
    try:
        ray.init(address=address, **init)
    except ConnectionError as exc:
        raise InputError(f"{name}: cannot connect to the Ray cluster ({exc}); check that it "
                         "runs (`ray status` on its head node) and that this machine reaches "
                         "it") from None


def cluster_address(address: str) -> Optional[str]:
    """The GCS address ``ray.init(address)`` would connect to (``auto``: the local cluster's);
    None where Ray finds none (``ray.init`` then says so)."""
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:
        return None
    try:
        return canonicalize_bootstrap_address(address)
    except Exception:  # noqa: BLE001 - ray.init reports an address it cannot use
        return None


def authenticate(gcs: str, name: str) -> None:
    """Set this process's Ray authentication mode to what the cluster at ``gcs`` asks for."""
    import os

    try:
        from ray._raylet import AuthenticationTokenLoader, Config, GcsClient
        from ray.exceptions import AuthenticationError, RpcError
    except ImportError:  # a Ray without token authentication: ray.init alone
        return

    def set_mode(mode: str) -> None:  # what Ray's own `ray start` does to turn it on
        os.environ["RAY_AUTH_MODE"] = mode
        Config.initialize("")

    def accepted() -> bool:
        try:
            with quiet_stderr():  # Ray's C++ warns of every refusal; the caller explains it
                GcsClient(address=gcs)
        except AuthenticationError:
            return False
        except RpcError as exc:
            raise InputError(f"{name}: no Ray cluster answers at {gcs} ({exc}); start one "
                             "there with `ray start --head`, or check the address and "
                             "port") from None
        except Exception as exc:  # noqa: BLE001 - anything else: ray.init says what it says
            log.debug("asking the Ray cluster at %s: %r", gcs, exc)
        return True

    # Not a word of the token until the cluster asks for one: a driver that has read it
    # (even to see whether there is one) refuses its workers' calls that come without it,
    # whatever its mode (Ray 2.60), and the workers of a cluster without authentication
    # send none.
    # (And a driver in token mode without a token is killed by a failed check in Ray's C++.)
    chosen = os.environ.get("RAY_AUTH_MODE", "").lower()
    if chosen != "token":
        if chosen != "disabled":  # unset: as the cluster asks
            set_mode("disabled")
        if accepted():
            return
        if chosen == "disabled":
            fail(name, "requires token authentication and RAY_AUTH_MODE=disabled is set "
                       "here; unset it and give this machine the cluster's token")
    if not AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True):
        fail(name, "requires token authentication and this machine has no token; give it "
                   "the cluster's")
    set_mode("token")
    if not accepted():
        fail(name, f"refused the token this machine has ({token_source()}): another "
                   "cluster's, e.g. one an earlier local Ray run left; replace it with this "
                   "cluster's")


@contextmanager
def quiet_stderr():
    """File descriptor 2 to /dev/null for the block (native code writes there directly)."""
    import os
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def fail(name: str, cause: str) -> None:
    raise InputError(f"{name}: the Ray cluster {cause}: run `ray get-auth-token` on its head "
                     "node and put the output in ~/.ray/auth_token here, or set RAY_AUTH_TOKEN "
                     "to it (https://docs.ray.io/en/latest/ray-security/token-auth.html)")


def token_source() -> str:
    """Where this process's Ray token comes from, for messages (the order Ray reads them)."""
    import os

    if os.environ.get("RAY_AUTH_TOKEN"):
        return "the RAY_AUTH_TOKEN variable"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return os.environ["RAY_AUTH_TOKEN_PATH"] + " (RAY_AUTH_TOKEN_PATH)"
    return str(Path.home() / ".ray" / "auth_token")
