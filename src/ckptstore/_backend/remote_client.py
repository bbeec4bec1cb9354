"""The client side of a remote store: its URL, the obstore client built from the usual environment, the count of
requests sent, and the translation of the client's errors into one-line `RemoteStoreError`s.

obstore (Rust object_store) is the client: multipart uploads, ranged and parallel reads, and the conditional PUTs
the seam needs (create-if-absent, replace-if-ETag-matches), for S3 and S3-compatible servers, GCS and Azure alike.
Credentials come from where the AWS (GCP, Azure) tools look: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL, or AWS_PROFILE (read through boto3 when it is installed). They are
handed to the client and never kept in a message: errors name the URL the user gave, nothing else.
"""

from __future__ import annotations

import os
import re
import threading
from collections import Counter
from datetime import timedelta
from typing import Any

from ..errors import CorruptObject, InvalidArgument, RemoteStoreError

SCHEMES = ("s3", "gs", "az", "abfs", "abfss", "azure")
_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<bucket>[^/]+)(?:/(?P<prefix>.*))?$")


def is_remote_url(location: object) -> bool:
    m = _URL.match(str(location))
    return bool(m) and m.group("scheme").lower() in SCHEMES


def split_url(url: str) -> tuple[str, str, str]:
    """(scheme, bucket, prefix without slashes at its ends) of a store URL."""
    m = _URL.match(url)
    if not m or m.group("scheme").lower() not in SCHEMES:
        raise InvalidArgument(f"Store URL {url!r} is not one of {', '.join(s + '://' for s in SCHEMES[:3])}.",
                              hint="Write it as s3://BUCKET/PREFIX (gs://, az:// for GCS and Azure).")
    return m.group("scheme").lower(), m.group("bucket"), (m.group("prefix") or "").strip("/")


class RequestCounter:
    """Requests sent to the remote, by kind (GET, HEAD, PUT, LIST, DELETE): what tests and benches report."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def add(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self.counts[kind] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())


def _retry_config() -> dict[str, Any]:
    # A few quick retries: the client's default (10 retries over 3 minutes) turned a wrong endpoint into minutes of
    # silence before the one-line error.
    return {"max_retries": 3, "retry_timeout": timedelta(seconds=15),
            "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=2),
                        "base": 2.0}}


def _profile_provider() -> Any | None:
    """Credentials of AWS_PROFILE (~/.aws/config, SSO, assume-role) through boto3, which object_store cannot read."""
    if not os.environ.get("AWS_PROFILE") or os.environ.get("AWS_ACCESS_KEY_ID"):
        return None
    try:
        import boto3
        from obstore.auth.boto3 import Boto3CredentialProvider
    except ImportError:
        return None
    return Boto3CredentialProvider(boto3.Session(profile_name=os.environ["AWS_PROFILE"]))


def make_client(url: str) -> Any:
    """An obstore store rooted at the URL's prefix, configured from the environment."""
    try:
        import obstore.store
    except ImportError:
        raise InvalidArgument(
            f"Store {url!r} is remote, and the object-storage client is not installed.",
            hint="pip install 'ckptstore[s3]' (it adds obstore).",
        ) from None
    scheme, bucket, prefix = split_url(url)
    client_options: dict[str, Any] = {"connect_timeout": timedelta(seconds=5), "timeout": timedelta(seconds=120)}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if scheme == "s3":
        config: dict[str, Any] = {}
        if endpoint:
            config["endpoint"] = endpoint
            if endpoint.startswith("http://"):
                client_options["allow_http"] = True
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            config["region"] = region
        provider = _profile_provider()
        kwargs: dict[str, Any] = {"credential_provider": provider} if provider is not None else {}
        return obstore.store.S3Store(bucket, prefix=prefix or None, config=config, client_options=client_options,
                                     retry_config=_retry_config(), **kwargs)
    return obstore.store.from_url(url, client_options=client_options, retry_config=_retry_config())


def translate(exc: BaseException, url: str, *, key: str | None = None) -> BaseException:
    """The client's error as what a user can act on. Server messages are reduced to their error code: they can quote
    request details, never credentials, but a code is what the user needs."""
    text = str(exc)
    code = re.search(r"<Code>([^<]+)</Code>", text)
    code_s = code.group(1) if code else ""
    if code_s == "NoSuchBucket" or "NoSuchBucket" in text:
        _, bucket, _ = split_url(url)
        return RemoteStoreError(url, f"the bucket {bucket!r} does not exist.",
                                hint="Create the bucket first (e.g. 'aws s3 mb s3://BUCKET'), or check the URL and"
                                     " AWS_ENDPOINT_URL.")
    if code_s in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken",
                  "InvalidToken", "AuthorizationHeaderMalformed") or type(exc).__name__ in (
            "PermissionDeniedError", "UnauthenticatedError"):
        why = code_s or type(exc).__name__.removesuffix("Error")
        return RemoteStoreError(url, f"the server refused the credentials ({why}).",
                                hint="Check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and that they"
                                     " may read and write this bucket.")
    if any(s in text for s in ("error sending request", "Connection refused", "connection error", "dns error",
                               "tcp connect error", "operation timed out", "error trying to connect",
                               "connection closed", "Timeout")):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "the default"
        return RemoteStoreError(url, f"cannot reach the server (endpoint {endpoint}).",
                                hint="Check AWS_ENDPOINT_URL and the network; nothing was committed, so the same"
                                     " command can simply be run again.")
    if isinstance(exc, FileNotFoundError) and key is not None:
        return CorruptObject(f"{key} is missing from the store {url}.", path=key)
    first = text.splitlines()[0] if text else type(exc).__name__
    first = re.sub(r"https?://\S+", "<endpoint>", first)[:200]
    return RemoteStoreError(url, f"request failed ({code_s or type(exc).__name__}: {first}).",
                            hint="Run again with --debug for the full error; nothing was committed.")
