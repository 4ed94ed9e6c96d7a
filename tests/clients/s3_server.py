"""A local S3 endpoint for the attachment tests: moto's server (others' code) on a loopback
port, with an empty bucket.

Prints one JSON line, {"port": N, "bucket": "..."}, once it serves, then runs until its stdin
closes (the test ends).
"""

import json
import socket
import sys

import boto3
from moto.server import ThreadedMotoServer

BUCKET = "convoy-attachments"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    s3 = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name="us-east-1",
        aws_access_key_id="convoy",
        aws_secret_access_key="convoy-secret",
    )
    s3.create_bucket(Bucket=BUCKET)
    # Anyone may read objects, so the test checks what the bucket holds without our signer.
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": "*",
                "Action": "s3:GetObject",
                "Resource": f"arn:aws:s3:::{BUCKET}/*",
            }
        ],
    }
    s3.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps(policy))
    print(json.dumps({"port": port, "bucket": BUCKET}), flush=True)
    sys.stdin.read()
    server.stop()


if __name__ == "__main__":
    main()
