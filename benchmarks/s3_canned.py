"""A minimal S3 stand-in for benchmarks: ListObjectsV2 and GetObject from memory, nothing else.

moto spends ~4 ms of (GIL-bound) CPU per GET and ~0.3 s per 1,000-key listing page on this machine,
which caps any client at its pace. This server answers from bytes prepared in advance (a list page
is rendered once, when first asked for, and cached), so a benchmark against it measures the client:
obstore and octbatch. It checks no signature and keeps no state; benchmarks only.
"""

from __future__ import annotations

import bisect
import hashlib
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LAST_MODIFIED = "2026-12-02T14:00:00.000Z"
HTTP_DATE = "Wed, 02 Dec 2026 14:00:00 GMT"


class CannedS3:
    """`with CannedS3({"bucket": {"key": b"bytes"}}) as s3:` serves on s3.endpoint (127.0.0.1)."""

    def __init__(self, buckets: dict[str, dict[str, bytes]]):
        self.objects = buckets
        self.names = {b: sorted(objs) for b, objs in buckets.items()}
        self.etags = {(b, k): hashlib.md5(v).hexdigest() for b, objs in buckets.items() for k, v in objs.items()}
        self._pages: dict[tuple, bytes] = {}
        self._httpd: ThreadingHTTPServer | None = None
        self.endpoint = ""

    def page(self, bucket: str, prefix: str, after: str) -> bytes:
        key = (bucket, prefix, after)
        got = self._pages.get(key)
        if got is not None:
            return got
        names = self.names.get(bucket, [])
        i = bisect.bisect_right(names, after) if after else bisect.bisect_left(names, prefix)
        chunk = []
        while i < len(names) and len(chunk) < 1000 and names[i].startswith(prefix):
            chunk.append(names[i])
            i += 1
        more = i < len(names) and names[i].startswith(prefix)
        body = "".join(
            f"<Contents><Key>{k}</Key><LastModified>{LAST_MODIFIED}</LastModified><ETag>&quot;"
            f"{self.etags[(bucket, k)]}&quot;</ETag><Size>{len(self.objects[bucket][k])}</Size>"
            "<StorageClass>STANDARD</StorageClass></Contents>"
            for k in chunk
        )
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<Name>{bucket}</Name><Prefix>{prefix}</Prefix><KeyCount>{len(chunk)}</KeyCount><MaxKeys>1000</MaxKeys>"
            f"<IsTruncated>{'true' if more else 'false'}</IsTruncated>"
            + (f"<NextContinuationToken>{urllib.parse.quote(chunk[-1])}</NextContinuationToken>" if more else "")
            + body
            + "</ListBucketResult>"
        ).encode()
        self._pages[key] = xml
        return xml

    def __enter__(self) -> CannedS3:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def reply(self, status: int, body: bytes, headers: dict) -> None:
                # One write for head and body: written apart, Nagle + the client's delayed ACK cost
                # ~10 ms per response on loopback.
                head = f"HTTP/1.1 {status} {'OK' if status == 200 else 'Not Found'}\r\n" + "".join(
                    f"{k}: {v}\r\n" for k, v in (headers | {"Content-Length": str(len(body))}).items()
                )
                self.wfile.write(head.encode() + b"\r\n" + body)

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                bucket, _, key = urllib.parse.unquote(url.path).lstrip("/").partition("/")
                q = urllib.parse.parse_qs(url.query)
                if not key and q.get("list-type") == ["2"]:
                    token = urllib.parse.unquote(q.get("continuation-token", [""])[0])
                    body = server.page(bucket, q.get("prefix", [""])[0], token)
                    self.reply(200, body, {"Content-Type": "application/xml"})
                    return
                data = server.objects.get(bucket, {}).get(key)
                if data is None:
                    self.reply(404, b"<Error><Code>NoSuchKey</Code></Error>", {"Content-Type": "application/xml"})
                    return
                etag = server.etags[(bucket, key)]
                self.reply(200, data, {"ETag": f'"{etag}"', "Last-Modified": HTTP_DATE})

            def log_message(self, *args) -> None:
                pass

        from tests.helpers.s3_server import free_port

        port = free_port()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def env(self) -> dict:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "canned",
            "AWS_SECRET_ACCESS_KEY": "canned",
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
