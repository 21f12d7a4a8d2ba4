"""An S3-compatible server on 127.0.0.1 for tests and benchmarks: moto's standalone server
(`pip install 'moto[server]'`) in a process of its own, stopped on exit. Nothing beyond loopback.

With auth=True the server checks credentials like S3 does: moto lets the first few requests through
unauthenticated (INITIAL_NO_AUTH_ACTION_COUNT), which create an IAM user, its access key and a
policy allowing s3:*; every later request must be signed with that key."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    pid: int = 0  # the server's process (benchmarks read its CPU time)

    def env(self, **extra) -> dict:
        """The standard AWS variables that point any S3 client at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            **extra,
        }

    def client(self, **kw):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            **kw,
        )

    def upload_folder(self, bucket: str, prefix: str, root, *, threads: int = 8) -> int:
        """Create `bucket` and put every file under `root` as `prefix` + its relative path (8 puts at a
        time); returns how many. The archive tests and benchmarks read from."""
        from concurrent.futures import ThreadPoolExecutor
        from pathlib import Path

        root = Path(root)
        files = sorted(p for p in root.rglob("*") if p.is_file())
        c = self.client()
        c.create_bucket(Bucket=bucket)
        with ThreadPoolExecutor(threads) as pool:
            list(
                pool.map(
                    lambda p: c.put_object(Bucket=bucket, Key=f"{prefix}{p.relative_to(root)}", Body=p.read_bytes()),
                    files,
                )
            )
        return len(files)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_server(*, auth: bool = False, timeout: float = 60):
    """Yields an S3Server for a fresh, empty moto server on loopback."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    if auth:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = "3"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"moto server did not start on {url}") from None
                time.sleep(0.1)
        key, secret = "octbatch-test", "octbatch-test-secret"
        if auth:
            import boto3

            iam = boto3.client(
                "iam",
                endpoint_url=url,
                region_name="us-east-1",
                aws_access_key_id="bootstrap",
                aws_secret_access_key="bootstrap",
            )
            iam.create_user(UserName="octbatch")
            k = iam.create_access_key(UserName="octbatch")["AccessKey"]
            iam.put_user_policy(
                UserName="octbatch",
                PolicyName="s3",
                PolicyDocument=json.dumps(
                    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
                ),
            )
            key, secret = k["AccessKeyId"], k["SecretAccessKey"]
        yield S3Server(url, key, secret, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
